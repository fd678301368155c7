"""Build and load the node's libbpf objects: BPF socket iterators compiled
at run time with clang against the running kernel's BTF (CO-RE), loaded
through libbpf (native.py), reusing the agent's pinned `flows` socket
storage, and read; and the BTF probe for kernel functions.

Used by the iterator tools through iterrun.IterRunner (termination,
socket statistics, the flow reader), which also runs them in every network
namespace (netns.py):

    obj = IterObject(build("sock_stats.bpf.c"), pin_dir,
                     {"tcp": "socklb_stats_tcp", "udp": "socklb_stats_udp"})
    data = obj.read_iter("tcp")     # in the calling thread's namespace
    obj.close()

Objects and the vmlinux.h they are compiled against are cached (keyed by a
hash of the sources, the compiler, the flags and the kernel build) in
$SOCKLB_CACHE_DIR, else $XDG_CACHE_HOME/socklb, else /var/cache/socklb (root)
or ~/.cache/socklb.
"""
from __future__ import annotations

import ctypes as ct
import errno
import hashlib
import logging
import os
import platform
import shutil
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping

from . import kernel, layout, native
from .loader import bpf_source_dir

log = logging.getLogger(__name__)

BTF_VMLINUX = Path("/sys/kernel/btf/vmlinux")

BPF_MAP_TYPE_SK_STORAGE = 24

# Read size of an iterator fd. The kernel runs the program on objects until
# the bytes produced reach the read size, in a buffer of 8 pages; an object
# whose record overflows that buffer is rolled back and shown again on the
# next read, and a socket destroyed in the first showing is then skipped as
# unhashed: its record would be lost. Reading at most half the buffer keeps
# every record of one call within it.
ITER_READ = 16384


class BpfObjError(RuntimeError):
    """Building, loading or running a libbpf object failed."""


# --- build: vmlinux.h and the object, cached ----------------------------------

def cache_dir() -> Path:
    env = os.environ.get("SOCKLB_CACHE_DIR")
    if env:
        d = Path(env)
    elif os.environ.get("XDG_CACHE_HOME"):
        d = Path(os.environ["XDG_CACHE_HOME"]) / "socklb"
    elif os.geteuid() == 0:
        d = Path("/var/cache/socklb")
    else:
        d = Path.home() / ".cache" / "socklb"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def kernel_id() -> str:
    u = os.uname()
    return hashlib.sha256(f"{u.release}\0{u.version}\0{u.machine}".encode()).hexdigest()[:16]


def atomic_write(path: Path, produce: Callable[[Path], None]) -> None:
    """produce(tmp) writes a temporary file next to path, renamed into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    os.close(fd)
    try:
        produce(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def vmlinux_h(cache: Path) -> Path:
    """vmlinux.h of the running kernel (bpftool btf dump ... format c)."""
    d = cache / f"vmlinux-{kernel_id()}"
    h = d / "vmlinux.h"
    if h.exists():
        return h
    bpftool = shutil.which("bpftool")
    if bpftool is None:
        raise BpfObjError("bpftool is needed to generate vmlinux.h (Debian package bpftool)")
    if not BTF_VMLINUX.exists():
        raise BpfObjError(f"{BTF_VMLINUX} is missing: the kernel has no BTF (CONFIG_DEBUG_INFO_BTF)")
    d.mkdir(parents=True, exist_ok=True)

    def produce(tmp: Path):
        with open(tmp, "wb") as out:
            r = subprocess.run([bpftool, "btf", "dump", "file", str(BTF_VMLINUX), "format", "c"],
                               stdout=out, stderr=subprocess.PIPE, timeout=120)
        if r.returncode != 0:
            raise BpfObjError(f"bpftool btf dump failed: {r.stderr.decode(errors='replace')}")

    atomic_write(h, produce)
    return h


def find_clang() -> str:
    for c in (os.environ.get("SOCKLB_CLANG"), "clang", "clang-14"):
        if c and shutil.which(c):
            return shutil.which(c)
    raise BpfObjError("clang is needed to build the BPF iterator programs (Debian package clang)")


_clang_versions: dict[str, str] = {}


def clang_version(clang: str) -> str:
    if clang not in _clang_versions:
        r = subprocess.run([clang, "--version"], capture_output=True, text=True, timeout=60)
        _clang_versions[clang] = r.stdout.splitlines()[0] if r.stdout else clang
    return _clang_versions[clang]


def target_arch() -> str:
    return {"x86_64": "x86", "AMD64": "x86", "aarch64": "arm64", "arm64": "arm64", "s390x": "s390", "ppc64le": "powerpc",
            "riscv64": "riscv"}.get(platform.machine(), platform.machine())


def build(source: str, defines: Iterable[str] = (), cache: Path | None = None, suffix: str = "") -> Path:
    """Compile bpf/<source> (with -D<define> for each define) against the
    running kernel's vmlinux.h, or reuse the cached object. The object is
    named <source stem>-<hash><suffix>.o in the cache."""
    cache = cache or cache_dir()
    src_dir = bpf_source_dir()
    src = src_dir / source
    clang = find_clang()
    flags = ["-O2", "-g", "-target", "bpf", f"-D__TARGET_ARCH_{target_arch()}"]
    flags += [f"-D{d}" for d in defines]
    h = hashlib.sha256()
    headers = [p.read_bytes() for p in sorted(src_dir.glob("*.h"))]
    for part in (src.read_bytes(), *headers, clang_version(clang).encode(),
                 kernel_id().encode(), " ".join(flags).encode()):
        h.update(part)
        h.update(b"\0")
    stem = source.split(".", 1)[0]
    obj = cache / f"{stem}-{h.hexdigest()[:20]}{suffix}.o"
    if obj.exists():
        return obj
    inc = vmlinux_h(cache).parent

    def produce(tmp: Path):
        cmd = [clang, *flags, f"-I{inc}", f"-I{src_dir}", "-c", str(src), "-o", str(tmp)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise BpfObjError(f"compiling {src} failed:\n{' '.join(cmd)}\n{r.stderr}")

    t0 = time.monotonic()
    atomic_write(obj, produce)
    log.info("built %s in %.1fs", obj, time.monotonic() - t0)
    return obj


# --- probes ---------------------------------------------------------------------

_BTF_KIND_FUNC = 12
_BTF_EXTRA = {1: 4, 3: 12, 14: 4, 17: 4}          # fixed tail after the 12-byte type header
_BTF_PER_VLEN = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}
_func_cache: dict[str, bool] = {}


def btf_has_func(name: str, path: Path = BTF_VMLINUX) -> bool:
    """Whether the BTF at path has a FUNC of that name (walks the type section)."""
    key = f"{path}:{name}"
    if key in _func_cache:
        return _func_cache[key]
    try:
        data = path.read_bytes()
    except OSError:
        _func_cache[key] = False
        return False
    magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", data)
    if magic != 0xEB9F:
        raise BpfObjError(f"{path}: not BTF (or not little-endian)")
    strs = data[hdr_len + str_off: hdr_len + str_off + str_len]
    want = name.encode() + b"\0"
    found = False
    if (b"\0" + want) in strs:
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        unpack = struct.Struct("<III").unpack_from
        while pos < end:
            name_off, info, _ = unpack(data, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            if kind == _BTF_KIND_FUNC and strs[name_off:name_off + len(want)] == want:
                found = True
                break
            pos += 12 + _BTF_EXTRA.get(kind, 0) + _BTF_PER_VLEN.get(kind, 0) * vlen
    _func_cache[key] = found
    return found


# --- libbpf through ctypes ----------------------------------------------------------

class _IterMapInfo(ct.Structure):  # union bpf_iter_link_info, its .map member
    _fields_ = [("map_fd", ct.c_uint32)]


class _IterAttachOpts(ct.Structure):  # struct bpf_iter_attach_opts
    _fields_ = [("sz", ct.c_size_t), ("link_info", ct.POINTER(_IterMapInfo)), ("link_info_len", ct.c_uint32)]


def strerror(e: int) -> str:
    # libbpf's own codes (LIBBPF_ERRNO__*) start at 4000
    return os.strerror(e) if e < 4000 else f"libbpf error {e} (bad or unsupported object)"


def first_line(e: BaseException | str) -> str:
    """The first line of an error: libbpf's errors carry its whole log after it."""
    lines = str(e).strip().splitlines()
    if lines:
        return lines[0]
    return type(e).__name__ if isinstance(e, BaseException) else "(no reason given)"


def log_tail(lines: list[str], n: int = 40) -> str:
    text = "".join(lines).rstrip()
    tail = text.splitlines()[-n:]
    return "\n".join(tail)


class IterObject:
    """A loaded libbpf object whose programs are socket iterators.

    path:     the compiled object (build()).
    pin_dir:  the agent's pin directory: the object's maps `flows` and
              `conn_flows` reuse the pinned socket storage <pin_dir>/flows
              and slots <pin_dir>/conn_flows (checked for the layout this
              build expects), so the programs read the records the
              connect/sendmsg hooks wrote.
    programs: key -> program name; each is attached as an iterator and read
              with read_iter(key). The object's other programs are not
              loaded (a kernel may refuse one kind of iterator and allow
              another).
    map_keys: keys of `programs` that iterate the elements of a map and are
              attached to it: a key -> map name mapping, or keys alone for
              the `flows` map (iter/bpf_sk_storage_map).
    reuse:    more of the agent's pinned maps the object's maps of the same
              name reuse: name -> (key size, value size) this build expects
              (checked); every one must be pinned.
    error:    the exception (BpfObjError or a subclass) raised when anything
              fails; nothing is left open then.
    """

    def __init__(self, path: Path, pin_dir: Path, programs: Mapping[str, str],
                 map_keys: Iterable[str] | Mapping[str, str] = (),
                 error: type[BpfObjError] = BpfObjError, reuse: Mapping[str, tuple[int, int]] | None = None):
        self.error = error
        self.reuse = dict(reuse or {})
        self.lib = native.libbpf()
        self.path = Path(path)
        self.obj = None
        self.links: dict[str, int] = {}
        self._link_ptrs: list[int] = []
        with native.libbpf_messages() as logbuf:
            try:
                iter_maps = dict(map_keys) if isinstance(map_keys, Mapping) else dict.fromkeys(map_keys, "flows")
                self._open_load(self.path, Path(pin_dir), programs, iter_maps, logbuf)
            except Exception:
                self.close()
                raise

    def _open_load(self, path: Path, pin_dir: Path, programs: Mapping[str, str], map_keys: dict[str, str],
                   logbuf: list[str]) -> None:
        lib, err = self.lib, self.error
        obj = lib.bpf_object__open_file(os.fsencode(str(path)), None)
        if not obj:
            e = ct.get_errno() or errno.EINVAL
            raise err(f"libbpf cannot open {path}: {strerror(e)}\n{log_tail(logbuf)}")
        self.obj = obj
        flows = lib.bpf_object__find_map_by_name(obj, b"flows")
        if not flows:
            raise err(f"{path} has no map 'flows'")
        def flows_wrong(pinned: Path, info) -> str | None:
            if info.type != BPF_MAP_TYPE_SK_STORAGE or info.value_size != ct.sizeof(layout.SkFlow):
                return (f"{pinned} is not the flows socket storage this build expects (type {info.type}, "
                        f"value size {info.value_size}, want {BPF_MAP_TYPE_SK_STORAGE}/{ct.sizeof(layout.SkFlow)})")
            return None

        self._reuse_pinned(flows, pin_dir / "flows", "flows", flows_wrong)
        reuse = {"conn_flows": (ct.sizeof(ct.c_uint32), ct.sizeof(layout.ConnSlot)), **self.reuse}
        for name, sizes in reuse.items():
            def sizes_wrong(pinned: Path, info, sizes=sizes) -> str | None:
                if (info.key_size, info.value_size) != tuple(sizes):
                    return (f"{pinned} has keys/values of {info.key_size}/{info.value_size} bytes, "
                            f"this build expects {sizes[0]}/{sizes[1]}")
                return None

            m = lib.bpf_object__find_map_by_name(obj, name.encode())
            if not m:
                raise err(f"{path} has no map {name!r}")
            self._reuse_pinned(m, pin_dir / name, name, sizes_wrong)
        wanted = {name.encode() for name in programs.values()}
        prog = lib.bpf_object__next_program(obj, None)
        while prog:
            if lib.bpf_program__name(prog) not in wanted:
                lib.bpf_program__set_autoload(prog, False)
            prog = lib.bpf_object__next_program(obj, prog)
        ret = lib.bpf_object__load(obj)
        if ret < 0:
            raise err(f"loading {path.name} ({', '.join(programs.values())}) failed: "
                      f"{strerror(-ret)}\n{log_tail(logbuf)}")
        for key, name in programs.items():
            prog = lib.bpf_object__find_program_by_name(obj, name.encode())
            if not prog:
                raise err(f"{path} has no program {name}")
            opts = None
            if key in map_keys:
                m = lib.bpf_object__find_map_by_name(obj, map_keys[key].encode())
                if not m:
                    raise err(f"{path} has no map {map_keys[key]!r}")
                info = _IterMapInfo(map_fd=lib.bpf_map__fd(m))
                opts = ct.byref(_IterAttachOpts(ct.sizeof(_IterAttachOpts), ct.pointer(info), ct.sizeof(info)))
            link = lib.bpf_program__attach_iter(prog, opts)
            if not link:
                e = ct.get_errno() or errno.EINVAL
                raise err(f"attaching {name}: {strerror(e)}\n{log_tail(logbuf)}")
            self._link_ptrs.append(link)
            self.links[key] = lib.bpf_link__fd(link)

    def _reuse_pinned(self, m, pinned: Path, name: str, wrong: Callable[[Path, object], str | None]) -> None:
        """The object's map m reuses the pinned map, when wrong(pinned, its
        info) finds nothing wrong with it."""
        err = self.error
        try:
            fd = kernel.obj_get(pinned)
        except OSError as e:
            raise err(f"cannot open the agent's {name} map {pinned}: {e}") from e
        try:
            why = wrong(pinned, kernel.map_info(fd))
            if why:
                raise err(why)
            ret = self.lib.bpf_map__reuse_fd(m, fd)  # dups fd
            if ret < 0:
                raise err(f"bpf_map__reuse_fd({pinned}): {strerror(-ret)}")
        finally:
            os.close(fd)

    def map_fd(self, name: str) -> int:
        """fd of one of the object's own maps; owned by the object (never close it)."""
        m = self.lib.bpf_object__find_map_by_name(self.obj, name.encode()) if self.obj else None
        fd = self.lib.bpf_map__fd(m) if m else -1
        if fd < 0:
            raise self.error(f"map {name} missing after load")
        return fd

    def read_iter(self, key: str, read_size: int = ITER_READ) -> bytes:
        """Run one iterator to its end in the calling thread's network
        namespace; everything its program wrote."""
        fd = self.lib.bpf_iter_create(self.links[key])
        if fd < 0:
            raise self.error(f"bpf_iter_create({key}): {os.strerror(-fd)}")
        chunks = []
        try:
            while True:
                try:
                    chunk = os.read(fd, read_size)
                except BlockingIOError:
                    continue  # 1M sockets visited in one read without output: go on
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(fd)
        return b"".join(chunks)

    def close(self) -> None:
        for link in self._link_ptrs:
            self.lib.bpf_link__destroy(link)
        self._link_ptrs.clear()
        self.links.clear()
        if self.obj:
            self.lib.bpf_object__close(self.obj)
            self.obj = None
