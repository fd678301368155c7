"""Thin bindings to the kernel facilities the dataplane uses: libbpf's
low-level bpf() wrappers (maps, pins, cgroup links; libbpf itself is loaded
by native.py), and where cgroup v2 and bpffs are mounted. No policy here,
only typed calls and clear errors."""
from __future__ import annotations

import ctypes as ct
import enum
import errno
import os
import subprocess
from pathlib import Path

from .native import libbpf


class KernelError(OSError):
    """A bpf() call failed; carries errno and says what was attempted."""

    def __init__(self, err: int, what: str):
        super().__init__(err, f"{what}: {os.strerror(err)}")


class AttachType(enum.IntEnum):
    """enum bpf_attach_type values of the hooks socklb uses."""

    CGROUP_INET4_CONNECT = 10
    CGROUP_INET6_CONNECT = 11
    CGROUP_UDP4_SENDMSG = 14
    CGROUP_UDP6_SENDMSG = 15
    CGROUP_UDP4_RECVMSG = 19
    CGROUP_UDP6_RECVMSG = 20
    TRACE_ITER = 28
    CGROUP_INET4_GETPEERNAME = 29
    CGROUP_INET6_GETPEERNAME = 30
    CGROUP_INET_SOCK_RELEASE = 34


def _check(ret: int, what: str) -> int:
    # libbpf >= 1.0 returns -errno directly.
    if ret < 0:
        raise KernelError(-ret if ret != -1 else (ct.get_errno() or errno.EIO), what)
    return ret


def obj_pin(fd: int, path: str | Path) -> None:
    _check(libbpf().bpf_obj_pin(fd, os.fsencode(str(path))), f"pin {path}")


def obj_get(path: str | Path) -> int:
    return _check(libbpf().bpf_obj_get(os.fsencode(str(path))), f"open pinned {path}")


def link_create(prog_fd: int, target_fd: int, attach_type: AttachType) -> int:
    return _check(libbpf().bpf_link_create(prog_fd, target_fd, int(attach_type), None),
                  f"attach {attach_type.name}")


def link_update(link_fd: int, prog_fd: int) -> None:
    _check(libbpf().bpf_link_update(link_fd, prog_fd, None), "replace program of link")


def link_detach(link_fd: int) -> None:
    _check(libbpf().bpf_link_detach(link_fd), "detach link")


def unpin_link(pin: Path) -> None:
    """Detach a pinned link (its program leaves at once) and remove the pin."""
    fd = obj_get(pin)
    try:
        link_detach(fd)
    finally:
        os.close(fd)
    pin.unlink()


class Insn(ct.Structure):
    """struct bpf_insn."""
    _fields_ = [("code", ct.c_uint8), ("regs", ct.c_uint8), ("off", ct.c_int16), ("imm", ct.c_int32)]


class ProgLoadOpts(ct.Structure):
    # struct bpf_prog_load_opts of libbpf 1.x, up to the verifier log.
    _fields_ = [
        ("sz", ct.c_size_t), ("attempts", ct.c_int), ("expected_attach_type", ct.c_uint32),
        ("prog_btf_fd", ct.c_uint32), ("prog_flags", ct.c_uint32), ("prog_ifindex", ct.c_uint32),
        ("kern_version", ct.c_uint32), ("attach_btf_id", ct.c_uint32), ("attach_prog_fd", ct.c_uint32),
        ("attach_btf_obj_fd", ct.c_uint32), ("fd_array", ct.c_void_p),
        ("func_info", ct.c_void_p), ("func_info_cnt", ct.c_uint32), ("func_info_rec_size", ct.c_uint32),
        ("line_info", ct.c_void_p), ("line_info_cnt", ct.c_uint32), ("line_info_rec_size", ct.c_uint32),
        ("log_level", ct.c_uint32), ("log_size", ct.c_uint32), ("log_buf", ct.c_char_p),
    ]


def prog_load(prog_type: int, attach_type: AttachType, insns: list[Insn], name: str) -> int:
    """Load a hand-assembled program (a probe): its fd. KernelError carries
    the verifier's last line."""
    code = (Insn * len(insns))(*insns)
    log = ct.create_string_buffer(4096)
    opts = ProgLoadOpts(sz=ct.sizeof(ProgLoadOpts), expected_attach_type=int(attach_type),
                        log_level=1, log_size=len(log), log_buf=ct.cast(log, ct.c_char_p))
    ret = libbpf().bpf_prog_load(prog_type, name.encode(), b"GPL", code, len(insns), ct.byref(opts))
    if ret < 0:
        lines = [ln for ln in log.value.decode(errors="replace").splitlines() if ln.strip()]
        raise KernelError(-ret, f"load {name}" + (f" ({lines[-1]})" if lines else ""))
    return ret


def possible_cpus() -> int:
    return _check(libbpf().libbpf_num_possible_cpus(), "count possible CPUs")


class MapInfo(ct.Structure):
    # Leading fields of struct bpf_map_info; the kernel fills what fits.
    _fields_ = [
        ("type", ct.c_uint32), ("id", ct.c_uint32), ("key_size", ct.c_uint32),
        ("value_size", ct.c_uint32), ("max_entries", ct.c_uint32), ("map_flags", ct.c_uint32),
        ("name", ct.c_char * 16),
    ]


class LinkInfo(ct.Structure):
    # struct bpf_link_info with its union read as the cgroup member.
    _fields_ = [
        ("type", ct.c_uint32), ("id", ct.c_uint32), ("prog_id", ct.c_uint32), ("pad", ct.c_uint32),
        ("cgroup_id", ct.c_uint64), ("attach_type", ct.c_uint32), ("pad2", ct.c_uint32),
    ]


def _info(fd: int, info: ct.Structure, what: str) -> ct.Structure:
    size = ct.c_uint32(ct.sizeof(info))
    _check(libbpf().bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)), what)
    return info


def map_info(fd: int) -> MapInfo:
    return _info(fd, MapInfo(), "read map info")


def link_info(fd: int) -> LinkInfo:
    return _info(fd, LinkInfo(), "read link info")


def prog_query(cgroup_fd: int, attach_type: AttachType) -> list[int]:
    """Ids of the programs attached to a cgroup for one hook."""
    ids = (ct.c_uint32 * 64)()
    cnt = ct.c_uint32(len(ids))
    flags = ct.c_uint32(0)
    _check(libbpf().bpf_prog_query(cgroup_fd, int(attach_type), 0, ct.byref(flags), ids, ct.byref(cnt)),
           f"query {attach_type.name}")
    return list(ids[: cnt.value])


class BatchOpts(ct.Structure):
    """struct bpf_map_batch_opts."""
    _fields_ = [("sz", ct.c_size_t), ("elem_flags", ct.c_uint64), ("flags", ct.c_uint64)]


_BATCH_OPTS = BatchOpts(sz=ct.sizeof(BatchOpts))


class BpfMap:
    """A map opened by fd, read and written with the layout's ctypes types,
    or in batches of packed entries (update_batch, delete_batch)."""

    def __init__(self, fd: int, key_type, value_type, name: str, percpu: bool = False):
        self.fd, self.key_type, self.value_type, self.name = fd, key_type, value_type, name
        self.ncpus = possible_cpus() if percpu else 1
        # Per-CPU values come back as one 8-byte-aligned slot per possible CPU.
        self._slot = (ct.sizeof(value_type) + 7) // 8 * 8

    @classmethod
    def pinned(cls, path: Path, key_type, value_type, percpu: bool = False) -> "BpfMap":
        return cls(obj_get(path), key_type, value_type, path.name, percpu)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def update(self, key, value) -> None:
        _check(libbpf().bpf_map_update_elem(self.fd, ct.byref(key), ct.byref(value), 0),
               f"update {self.name}")

    def delete(self, key) -> bool:
        ret = libbpf().bpf_map_delete_elem(self.fd, ct.byref(key))
        if ret == -errno.ENOENT:
            return False
        _check(ret, f"delete from {self.name}")
        return True

    def batch_refused(self) -> str | None:
        """None when the kernel takes batch updates and deletes on this map
        (BPF_MAP_UPDATE_BATCH / BPF_MAP_DELETE_BATCH, Linux 5.6+ for hash
        maps), else why not. Batches of no entries: nothing is written."""
        count = ct.c_uint32(0)
        for what, ret in (("BPF_MAP_UPDATE_BATCH", lambda: libbpf().bpf_map_update_batch(
                              self.fd, None, None, ct.byref(count), ct.byref(_BATCH_OPTS))),
                          ("BPF_MAP_DELETE_BATCH", lambda: libbpf().bpf_map_delete_batch(
                              self.fd, None, ct.byref(count), ct.byref(_BATCH_OPTS)))):
            err = ret()
            if err < 0:
                err = -err if err != -1 else (ct.get_errno() or errno.EIO)
                return f"{what} on {self.name}: {os.strerror(err) if err != 524 else 'not supported'}"
        return None

    def update_batch(self, keys: bytes, values: bytes, count: int) -> None:
        """Write `count` entries in one call: keys and values packed back to
        back (key_size and value_size bytes each). The kernel writes them in
        order, one at a time, as update() would: a reader sees each entry
        appear in turn, never a half-written one."""
        n = ct.c_uint32(count)
        _check(libbpf().bpf_map_update_batch(self.fd, keys, values, ct.byref(n), ct.byref(_BATCH_OPTS)),
               f"update {self.name} (batch of {count}, {n.value} written)")

    def delete_batch(self, keys: bytes, count: int) -> int:
        """Delete `count` packed keys in order; keys that are not in the map
        are skipped, as delete() does (the kernel stops at the first one: the
        rest go in a further call). Returns how many were deleted."""
        size = len(keys) // count if count else 0
        deleted = done = 0
        buf = ct.create_string_buffer(keys, len(keys))
        base = ct.addressof(buf)
        while done < count:
            n = ct.c_uint32(count - done)
            ret = libbpf().bpf_map_delete_batch(self.fd, base + done * size, ct.byref(n), ct.byref(_BATCH_OPTS))
            deleted += n.value
            done += n.value
            if ret == -errno.ENOENT:
                done += 1  # the key at `done` is not there
            elif ret < 0:
                _check(ret, f"delete from {self.name} (batch of {count})")
        return deleted

    def lookup(self, key):
        value = self.value_type()
        ret = libbpf().bpf_map_lookup_elem(self.fd, ct.byref(key), ct.byref(value))
        if ret == -errno.ENOENT:
            return None
        _check(ret, f"lookup in {self.name}")
        return value

    def lookup_percpu(self, key) -> list:
        buf = ct.create_string_buffer(self._slot * self.ncpus)
        _check(libbpf().bpf_map_lookup_elem(self.fd, ct.byref(key), buf), f"lookup in {self.name}")
        return [self.value_type.from_buffer_copy(buf.raw, i * self._slot) for i in range(self.ncpus)]

    def add_percpu(self, key, n: int) -> None:
        """Add n to the first CPU's value of a per-CPU counter (readers sum
        over CPUs; a racing BPF increment on that CPU may be lost, as a
        user-space count is rare and approximate to that extent)."""
        values = self.lookup_percpu(key)
        buf = ct.create_string_buffer(self._slot * self.ncpus)
        for i, v in enumerate(values):
            ct.memmove(ct.addressof(buf) + i * self._slot, ct.byref(v), ct.sizeof(v))
        first = self.value_type.from_buffer(buf, 0)
        first.value += n
        _check(libbpf().bpf_map_update_elem(self.fd, ct.byref(key), buf, 0), f"update {self.name}")

    def zero_percpu(self, key) -> None:
        """Set every CPU's value of a per-CPU map entry to zero."""
        buf = ct.create_string_buffer(self._slot * self.ncpus)
        _check(libbpf().bpf_map_update_elem(self.fd, ct.byref(key), buf, 0), f"update {self.name}")

    def keys(self):
        key = self.key_type()
        nxt = self.key_type()
        prev = None
        while True:
            ret = libbpf().bpf_map_get_next_key(self.fd, None if prev is None else ct.byref(key), ct.byref(nxt))
            if ret == -errno.ENOENT:
                return
            _check(ret, f"walk {self.name}")
            ct.memmove(ct.byref(key), ct.byref(nxt), ct.sizeof(key))
            prev = True
            yield self.key_type.from_buffer_copy(key)

    def items(self):
        for k in list(self.keys()):
            v = self.lookup(k)
            if v is not None:
                yield k, v

    def raw_items(self, chunk: int = 4096) -> tuple[bytes, bytes]:
        """Every key and value of a hash map as two byte strings (the keys
        back to back, the values likewise, in the same order), read `chunk`
        entries per bpf() call (BPF_MAP_LOOKUP_BATCH; items() costs two
        calls and two objects per entry), for a reader that unpacks many
        records at once (layout.record_struct); what items() gives where the
        kernel refuses batches for this map."""
        lib = libbpf()
        ks, vs = ct.sizeof(self.key_type), ct.sizeof(self.value_type)
        keys, values = ct.create_string_buffer(ks * chunk), ct.create_string_buffer(vs * chunk)
        token = max(ks, 8)
        tok_in, tok_out = ct.create_string_buffer(token), ct.create_string_buffer(token)
        out_k, out_v, first = [], [], True
        while True:
            count = ct.c_uint32(chunk)
            ret = lib.bpf_map_lookup_batch(self.fd, None if first else tok_in, tok_out, keys, values,
                                           ct.byref(count), None)
            if ret < 0 and ret != -errno.ENOENT:
                if first and ret in (-errno.EINVAL, -errno.ENOTSUP, -524):  # 524: ENOTSUPP
                    pairs = list(self.items())
                    return b"".join(bytes(k) for k, _ in pairs), b"".join(bytes(v) for _, v in pairs)
                _check(ret, f"read {self.name} in batches")
            out_k.append(keys.raw[:ks * count.value])
            out_v.append(values.raw[:vs * count.value])
            if ret == -errno.ENOENT:
                return b"".join(out_k), b"".join(out_v)
            ct.memmove(tok_in, tok_out, token)
            first = False


# --- mounts --------------------------------------------------------------

def _mounts() -> list[tuple[str, str]]:
    out = []
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3:
            out.append((parts[1].replace("\\040", " "), parts[2]))
    return out


def cgroup2_mount() -> Path:
    """Where cgroup v2 is mounted (/sys/fs/cgroup on unified hosts,
    /sys/fs/cgroup/unified on hybrid ones)."""
    for path, fstype in _mounts():
        if fstype == "cgroup2":
            return Path(path)
    raise FileNotFoundError("no cgroup2 filesystem is mounted (see /proc/mounts)")


def ensure_bpffs(path: Path = Path("/sys/fs/bpf")) -> Path:
    """bpffs at path, mounting it when missing: pins live there."""
    if any(p == str(path) and t == "bpf" for p, t in _mounts()):
        return path
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "bpf", "bpf", str(path)], check=True)
    return path


def on_bpffs(path: Path) -> bool:
    path = path.resolve()
    return any(t == "bpf" and (path == Path(p) or Path(p) in path.parents) for p, t in _mounts())
