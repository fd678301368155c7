"""Read the flow records (socket storage) through a BPF map iterator: user
space cannot walk socket storage with get_next_key."""
from __future__ import annotations

import ctypes as ct
import os
import threading

from . import kernel, layout
from .loader import Datapath, bpf_source_dir

_TRACING = 26


class _IterLinkInfo(ct.Structure):
    _fields_ = [("map_fd", ct.c_uint32)]


class FlowReader:
    """Compiles the iterator once and reads a snapshot of all flows on demand."""

    def __init__(self, pin_dir):
        from bcc import BPF

        self._bpf = BPF(src_file=str(bpf_source_dir() / "flow_iter.c").encode(),
                        cflags=[f"-I{bpf_source_dir()}"])
        self._prog = self._bpf.load_func(b"bpf_iter__bpf_sk_storage_map", _TRACING)
        self._map_fd = kernel.obj_get(pin_dir / "flows")
        lib = ct.CDLL("libbcc.so.0", use_errno=True)
        self._attach = lib.bcc_iter_attach
        self._attach.argtypes = [ct.c_int, ct.c_void_p, ct.c_uint32]
        self._create = lib.bcc_iter_create
        self._create.argtypes = [ct.c_int]
        self._lock = threading.Lock()

    def read(self) -> list[layout.Flow]:
        with self._lock:
            info = _IterLinkInfo(map_fd=self._map_fd)
            link = self._attach(self._prog.fd, ct.byref(info), ct.sizeof(info))
            if link < 0:
                raise kernel.KernelError(ct.get_errno() or -link, "attach flows iterator")
            try:
                fd = self._create(link)
                if fd < 0:
                    raise kernel.KernelError(ct.get_errno() or -fd, "create flows iterator")
                with os.fdopen(fd, "rb", buffering=0) as f:
                    data = bytearray()
                    while chunk := f.read(65536):
                        data += chunk
            finally:
                os.close(link)
        size = ct.sizeof(layout.Flow)
        return [layout.Flow.from_buffer_copy(data, i) for i in range(0, len(data) - size + 1, size)]


_readers: dict[str, FlowReader] = {}


def read_flows(dp: Datapath) -> list[layout.Flow]:
    key = str(dp.pin_dir)
    if key not in _readers:
        _readers[key] = FlowReader(dp.pin_dir)
    return _readers[key].read()
