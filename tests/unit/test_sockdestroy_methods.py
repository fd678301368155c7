"""Choosing a termination method (socklb/dataplane/sockdestroy.py) when the
kernel offers neither: a clear error naming why each was refused. The probes
are replaced, so this needs no root and no BPF (it used to sit among the
kernel tests, marked as needing the agent and bcc for nothing)."""
import pytest

from socklb.dataplane import bpfobj, sockdiag
from socklb.dataplane import sockdestroy as term


def test_neither_method_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "flows").touch()
    monkeypatch.setattr(bpfobj, "btf_has_func", lambda name, path=None: False)
    monkeypatch.setattr(sockdiag, "probe", lambda: "netlink SOCK_DESTROY is not supported (test)")
    with pytest.raises(term.TerminationUnavailable) as e:
        term.Terminator(tmp_path)
    msg = str(e.value)
    assert "kfunc: " in msg and "bpf_sock_destroy" in msg and "netlink: " in msg, msg
    assert "netlink SOCK_DESTROY is not supported (test)" in msg, msg
    with pytest.raises(term.TerminationUnavailable, match="kfunc"):
        term.Terminator(tmp_path, method="kfunc")
    with pytest.raises(term.TerminationError, match="does not exist"):
        term.Terminator(tmp_path / "nowhere")
