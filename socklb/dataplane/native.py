"""The C libraries the dataplane calls through ctypes, each loaded once with
one table of signatures: libbpf (the low-level bpf() wrappers kernel.py
uses, and the object API bpfobj.py uses to open, load and attach the
iterator objects) and libc (setns, and vsnprintf to format libbpf's
messages). No other module of socklb loads a shared library: the bcc
programs (loader.py) go through bcc's own Python module, which loads libbcc
itself.

    lib = libbpf()                      # ct.CDLL, argtypes/restype set
    with libbpf_messages() as log:      # libbpf's messages go to `log`
        lib.bpf_object__load(obj)
    setns(fd)                           # enter a network namespace (this thread)
"""
from __future__ import annotations

import ctypes as ct
import ctypes.util
import os
import platform
import threading
from contextlib import contextmanager
from typing import Iterator

_vp, _i, _s, _u32 = ct.c_void_p, ct.c_int, ct.c_char_p, ct.c_uint32

# Every libbpf function socklb calls: name -> (argtypes, restype).
LIBBPF_SIGNATURES: dict[str, tuple[list, object]] = {
    # bpf() wrappers (kernel.py): pins, links, maps, info
    "bpf_obj_pin": ([_i, _s], _i),
    "bpf_obj_get": ([_s], _i),
    "bpf_link_create": ([_i, _i, _i, _vp], _i),
    "bpf_link_update": ([_i, _i, _vp], _i),
    "bpf_link_detach": ([_i], _i),
    "bpf_map_update_elem": ([_i, _vp, _vp, ct.c_uint64], _i),
    "bpf_map_lookup_elem": ([_i, _vp, _vp], _i),
    "bpf_map_delete_elem": ([_i, _vp], _i),
    "bpf_map_get_next_key": ([_i, _vp, _vp], _i),
    "bpf_map_update_batch": ([_i, _vp, _vp, ct.POINTER(_u32), _vp], _i),
    "bpf_map_delete_batch": ([_i, _vp, ct.POINTER(_u32), _vp], _i),
    "bpf_map_lookup_batch": ([_i, _vp, _vp, _vp, _vp, ct.POINTER(_u32), _vp], _i),
    "bpf_obj_get_info_by_fd": ([_i, _vp, ct.POINTER(_u32)], _i),
    "bpf_prog_query": ([_i, _i, _u32, ct.POINTER(_u32), ct.POINTER(_u32), ct.POINTER(_u32)], _i),
    "bpf_iter_create": ([_i], _i),
    "bpf_prog_load": ([_i, _s, _s, _vp, ct.c_size_t, _vp], _i),
    "libbpf_num_possible_cpus": ([], _i),
    # object API (bpfobj.py): open, load, attach iterators
    "bpf_object__open_file": ([_s, _vp], _vp),
    "bpf_object__load": ([_vp], _i),
    "bpf_object__close": ([_vp], None),
    "bpf_object__find_map_by_name": ([_vp, _s], _vp),
    "bpf_object__find_program_by_name": ([_vp, _s], _vp),
    "bpf_object__next_program": ([_vp, _vp], _vp),
    "bpf_program__name": ([_vp], _s),
    "bpf_program__set_autoload": ([_vp, ct.c_bool], _i),
    "bpf_program__fd": ([_vp], _i),
    "bpf_map__reuse_fd": ([_vp, _i], _i),
    "bpf_map__fd": ([_vp], _i),
    "bpf_map__set_max_entries": ([_vp, _u32], _i),
    "bpf_program__attach_iter": ([_vp, _vp], _vp),
    "bpf_link__fd": ([_vp], _i),
    "bpf_link__destroy": ([_vp], _i),
    "libbpf_set_print": ([_vp], _vp),
}

LIBC_SIGNATURES: dict[str, tuple[list, object]] = {
    "setns": ([_i, _i], _i),
    "vsnprintf": ([_s, ct.c_size_t, _s, _vp], _i),
}

CLONE_NEWNET = 0x40000000

_lock = threading.Lock()
_libs: dict[str, ct.CDLL] = {}


def _load(key: str, name: str | None, sigs: dict[str, tuple[list, object]]) -> ct.CDLL:
    with _lock:
        lib = _libs.get(key)
        if lib is None:
            lib = ct.CDLL(name, use_errno=True)
            for fn, (args, res) in sigs.items():
                f = getattr(lib, fn)
                f.argtypes, f.restype = args, res
            _libs[key] = lib
        return lib


def libbpf() -> ct.CDLL:
    """libbpf.so (loaded on first use), with LIBBPF_SIGNATURES set."""
    return _libs.get("bpf") or _load("bpf", ctypes.util.find_library("bpf") or "libbpf.so.1", LIBBPF_SIGNATURES)


def libc() -> ct.CDLL:
    """The C library of the process, with LIBC_SIGNATURES set."""
    return _libs.get("c") or _load("c", None, LIBC_SIGNATURES)


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """Move the calling thread into the namespace open at fd."""
    if libc().setns(fd, nstype) != 0:
        e = ct.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


# --- libbpf's messages -------------------------------------------------------

_PRINT_FN = ct.CFUNCTYPE(ct.c_int, ct.c_int, ct.c_char_p, ct.c_void_p)
_log: list[str] = []
_log_lock = threading.Lock()
_print_cb = None


def _printer():
    """The libbpf print callback that appends to _log, or None where a
    va_list cannot be passed on (formatting it needs va_list to be a
    pointer-sized array, as on x86-64)."""
    global _print_cb
    if _print_cb is None and platform.machine() in ("x86_64", "AMD64"):
        vsnprintf = libc().vsnprintf

        def cb(level, fmt, ap):
            buf = ct.create_string_buffer(4096)
            vsnprintf(buf, len(buf), fmt, ap)
            _log.append(buf.value.decode(errors="replace"))
            return 0

        _print_cb = _PRINT_FN(cb)
    return _print_cb


@contextmanager
def libbpf_messages() -> Iterator[list[str]]:
    """libbpf's messages during the block go to the list it yields (instead
    of stderr); one block at a time in the process."""
    lib = libbpf()
    with _log_lock:
        _log.clear()
        cb = _printer()
        old = lib.libbpf_set_print(ct.cast(cb, ct.c_void_p)) if cb else None
        try:
            yield _log
        finally:
            if cb:
                lib.libbpf_set_print(old)
