"""The operator CLI `socklb`: its own argument syntax (no server), then every
command end to end against a real control plane (embedded store, grpc.aio in
a background thread), in-process through socklb.cli.main and as a subprocess."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from support import free_port

from socklb import cli
from socklb.v1 import api_pb2, types_pb2

SOCKLB = Path(sys.executable).parent / "socklb"


@pytest.fixture
def no_rpc(monkeypatch):
    """Fails the test if the CLI sends anything."""
    sent = []

    def call(self, method, request):
        sent.append(method)
        raise AssertionError(f"{method} sent")

    monkeypatch.setattr(cli.Client, "call", call)
    return sent


def run_offline(capsys, *argv):
    code = cli.main(["--server", "127.0.0.1:1", *argv])
    out, err = capsys.readouterr()
    return code, out, err


# --- ADDR:PORT[@WEIGHT] ----------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("10.0.0.1:80", cli.Endpoint("10.0.0.1", 80)),
    ("10.0.0.1:8080@5", cli.Endpoint("10.0.0.1", 8080, 5)),
    ("10.0.0.1:0", cli.Endpoint("10.0.0.1", 0)),
    ("[::1]:80", cli.Endpoint("::1", 80)),
    ("[fd00::1]:65535@1", cli.Endpoint("fd00::1", 65535, 1)),
    ("10.0.0.1:80@65535", cli.Endpoint("10.0.0.1", 80, 65535)),
    # Above 65535: the server's to refuse (test_server_errors_exit_codes).
    ("10.0.0.1:80@70000", cli.Endpoint("10.0.0.1", 80, 70000)),
    ("[::ffff:10.0.0.1]:80@2", cli.Endpoint("::ffff:10.0.0.1", 80, 2)),
    # Not an IP: syntactically fine, the server judges addresses.
    ("backend-1:80", cli.Endpoint("backend-1", 80)),
])
def test_endpoint_syntax(text, expected):
    assert cli.parse_endpoint(text) == expected


@pytest.mark.parametrize("text, problem", [
    ("10.0.0.1", "expected ADDR:PORT"),
    ("10.0.0.1:", "port '' is not"),
    (":80", "missing address"),
    ("[]:80", "missing address"),
    ("::1:80", "must be in brackets"),
    ("fd00::1", "must be in brackets"),
    ("[::1]80", "expected [ADDR]:PORT"),
    ("[::1:80", "missing ']'"),
    ("10.0.0.1:http", "port 'http' is not a non-negative integer"),
    ("10.0.0.1:-1", "port '-1'"),
    ("10.0.0.1:65536", "port 65536 is out of range 0..65535"),
    ("10.0.0.1:80@", "weight '' is not"),
    ("10.0.0.1:80@heavy", "weight 'heavy'"),
    ("10.0.0.1:80@4294967296", "weight 4294967296 is out of range"),
    ("10.0.0.1:80@0", "weight 0 is refused: the API reads 0 as 1 (to send a backend no new flows, drain it)"),
    ("[::1]:80@00", "weight 0 is refused"),
    ("10.0.0.1:８0", "port '８0'"),
])
def test_malformed_endpoints_name_the_problem(text, problem):
    with pytest.raises(cli.UsageError) as e:
        cli.parse_endpoint(text)
    assert problem in str(e.value) and repr(text) in str(e.value)


def test_weight_is_refused_where_it_means_nothing():
    with pytest.raises(cli.UsageError, match="weight"):
        cli.parse_endpoint("10.0.0.1:80@3", allow_weight=False)
    assert cli.backend_refs(["10.0.0.1:80", "[::1]:0"]) == [
        api_pb2.BackendRef(address="10.0.0.1", port=80), api_pb2.BackendRef(address="::1", port=0)]


def test_format_endpoint_brackets_ipv6():
    assert cli.format_endpoint("10.0.0.1", 80) == "10.0.0.1:80"
    assert cli.format_endpoint("fd00::1", 80) == "[fd00::1]:80"


# --- options ----------------------------------------------------------------------------

def test_global_options_go_before_or_after_the_command(monkeypatch):
    monkeypatch.delenv("SOCKLB_SERVER", raising=False)
    a = cli.parse_args(["service", "list"])
    assert (a.server, a.output, a.timeout) == ("127.0.0.1:7400", "text", 10.0)
    a = cli.parse_args(["--server", "h:1", "-o", "json", "service", "list"])
    assert (a.server, a.output) == ("h:1", "json")
    a = cli.parse_args(["service", "get", "web", "-o", "yaml", "--server", "[::1]:9", "--timeout", "3"])
    assert (a.server, a.output, a.timeout, a.name) == ("[::1]:9", "yaml", 3.0, "web")
    monkeypatch.setenv("SOCKLB_SERVER", "cp.example:7400")
    assert cli.parse_args(["node", "list"]).server == "cp.example:7400"
    assert cli.parse_args(["--server", "x:2", "node", "list"]).server == "x:2"


def test_backend_options_apply_to_listed_backends(tmp_path):
    f = tmp_path / "b.yaml"
    f.write_text("- {address: 10.0.0.9, port: 90, node: n9, state: BACKEND_STATE_QUARANTINED}\n")
    a = cli.parse_args(["backend", "add", "web", "10.0.0.1:80@2", "--node", "n1", "--zone", "z1",
                        "--state", "draining", "[::1]:81", "-f", str(f), "--expected-version", "7"])
    assert (a.service, a.expected_version) == ("web", 7)
    b = cli.backends_from_args(a)
    assert [(x.address, x.port, x.weight, x.node, x.zone, x.state) for x in b] == [
        ("10.0.0.9", 90, 0, "n9", "", types_pb2.BACKEND_STATE_QUARANTINED),  # the file's, as written
        ("10.0.0.1", 80, 2, "n1", "z1", types_pb2.BACKEND_STATE_DRAINING),
        ("::1", 81, 0, "n1", "z1", types_pb2.BACKEND_STATE_DRAINING),
    ]
    a = cli.parse_args(["backend", "set", "web", "10.0.0.1:80"])
    (b,) = cli.backends_from_args(a)
    assert (b.node, b.zone, b.state, b.weight) == ("", "", types_pb2.BACKEND_STATE_UNSPECIFIED, 0)


def test_remove_drain_and_watch_options():
    a = cli.parse_args(["backend", "remove", "web", "10.0.0.1:80", "[::1]:80", "--keep-sockets"])
    assert (a.backends, a.keep_sockets, a.expected_version) == (["10.0.0.1:80", "[::1]:80"], True, 0)
    a = cli.parse_args(["backend", "drain", "web", "10.0.0.1:80", "--deadline", "30"])
    assert a.deadline == 30
    assert cli.parse_args(["backend", "drain", "web", "10.0.0.1:80"]).deadline == 0
    a = cli.parse_args(["watch", "--from-revision", "12", "--count", "3"])
    assert (a.from_revision, a.count) == (12, 3)
    assert cli.parse_args(["watch"]).count is None
    a = cli.parse_args(["stats", "--service", "web", "--node", "n1"])
    assert (a.service, a.node) == ("web", "n1")
    a = cli.parse_args(["service", "put", "-f", "-", "--create-only", "--expected-version", "4"])
    assert (a.file, a.create_only, a.expected_version) == ("-", True, 4)


@pytest.mark.parametrize("argv, problem", [
    ([], "required: COMMAND"),
    (["frobnicate"], "invalid choice"),
    (["service"], "required: ACTION"),
    (["service", "put"], "-f/--file"),
    (["service", "get"], "NAME"),
    (["service", "delete", "web", "--expected-version", "-1"], "out of range"),
    (["service", "list", "-o", "xml"], "invalid choice: 'xml'"),
    (["backend", "remove", "web"], "ADDR:PORT"),
    (["backend", "remove", "web", "10.0.0.1:80", "--bogus"], "unrecognized arguments: --bogus"),
    (["backend", "drain", "web", "10.0.0.1:80", "--deadline", "soon"], "'soon' is not an integer"),
    (["backend", "drain", "web", "10.0.0.1:80", "--deadline", "4294967296"], "out of range"),
    (["backend", "add", "web", "10.0.0.1:80", "--state", "dead"], "invalid choice: 'dead'"),
    (["watch", "--count", "many"], "'many' is not an integer"),
    (["--timeout", "soon", "node", "list"], "invalid float value"),
])
def test_usage_errors_exit_2_without_a_call(capsys, no_rpc, argv, problem):
    code, out, err = run_offline(capsys, *argv)
    assert code == 2 and out == ""
    assert "error: " in err and problem in err
    assert no_rpc == []


@pytest.mark.parametrize("argv, problem", [
    (["backend", "add", "web", "10.0.0.1"], "'10.0.0.1': expected ADDR:PORT"),
    (["backend", "add", "web", "10.0.0.1:80", "::1:80"], "'::1:80': an IPv6 address must be in brackets"),
    (["backend", "add", "web"], "give backends"),
    (["backend", "set", "web"], "--none"),
    (["backend", "set", "web", "10.0.0.1:80", "--none"], "--none sets no backends"),
    (["backend", "set", "web", "10.0.0.1:99999"], "port 99999 is out of range"),
    (["backend", "remove", "web", "10.0.0.1:80@2"], "a weight (@N) is not accepted here"),
    (["backend", "add", "web", "10.0.0.1:80@0"], "'10.0.0.1:80@0': weight 0 is refused: the API reads 0 as 1"),
    (["backend", "set", "web", "10.0.0.1:80@3", "[::1]:80@0"], "'[::1]:80@0': weight 0 is refused"),
    (["backend", "drain", "web", "[::1]"], "expected [ADDR]:PORT"),
    (["service", "put", "-f", "/nonexistent/web.yaml"], "cannot read /nonexistent/web.yaml"),
    (["backend", "set", "web", "-f", "/nonexistent/b.yaml"], "cannot read /nonexistent/b.yaml"),
])
def test_bad_cli_input_is_named_and_nothing_is_sent(capsys, no_rpc, argv, problem):
    code, out, err = run_offline(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.startswith("error: ") and problem in err, err
    assert no_rpc == []


# --- files --------------------------------------------------------------------------------

WEB = """\
# socklb.v1.Service
name: team/web
frontends:
  - {address: 127.96.0.10, port: 80, protocol: PROTOCOL_TCP}
  - {address: "fd00:96::10", port: 80}
backends:
  - {address: 127.0.0.2, port: 18080, weight: 3, node: n1, zone: z1}
  - {address: 127.0.0.3, port: 18080}
selection: SELECTION_MAGLEV
affinity: {mode: AFFINITY_MODE_CLIENT, timeout_seconds: 30}
"""


def test_service_file_yaml_and_json(tmp_path):
    y = tmp_path / "web.yaml"
    y.write_text(WEB)
    svc = cli.load_service(str(y))
    assert svc.name == "team/web" and svc.selection == types_pb2.SELECTION_MAGLEV
    assert [b.weight for b in svc.backends] == [3, 0] and svc.affinity.timeout_seconds == 30
    j = tmp_path / "web.json"
    j.write_text(json.dumps(yaml.safe_load(WEB)))
    assert cli.load_service(str(j)) == svc


def test_unquoted_yaml_timestamps_are_accepted(tmp_path):
    f = tmp_path / "b.yaml"
    f.write_text("backends:\n  - {address: 10.0.0.1, port: 80, state: BACKEND_STATE_DRAINING,"
                 " drain_deadline: 2030-01-02T03:04:05Z}\n")
    (b,) = cli.load_backends(str(f))
    assert b.drain_deadline.ToJsonString() == "2030-01-02T03:04:05Z"


def test_backend_files(tmp_path):
    f = tmp_path / "web.yaml"
    f.write_text(WEB)  # a service file: its backends
    assert [b.address for b in cli.load_backends(str(f))] == ["127.0.0.2", "127.0.0.3"]
    f.write_text('[{"address": "::1", "port": 80, "weight": 2}]')
    assert cli.load_backends(str(f)) == [types_pb2.Backend(address="::1", port=80, weight=2)]
    f.write_text("")
    assert cli.load_backends(str(f)) == []


@pytest.mark.parametrize("content, problem", [
    ("name: web\nfrontends: [{address: 1.2.3.4, port: 80}\n", "is not valid YAML/JSON: line 3, column 1"),
    ("- name: web\n", "expected a mapping (a socklb.v1.Service), got list"),
    ("", "the file is empty: expected a mapping (a socklb.v1.Service)"),
    ("name: web\nfrontend: []\n", 'has no field named "frontend"'),
    ("name: web\nselection: SELECTION_BEST\n", "SELECTION_BEST"),
    ("name: web\nfrontends: [{port: eighty}]\n", "frontends"),
])
def test_bad_service_files_are_named(tmp_path, capsys, no_rpc, content, problem):
    f = tmp_path / "web.yaml"
    f.write_text(content)
    code, out, err = run_offline(capsys, "service", "put", "-f", str(f))
    assert (code, out) == (2, "")
    assert err.startswith(f"error: {f}") and problem in err, err
    assert no_rpc == []


def test_bad_backend_files_are_named(tmp_path, capsys, no_rpc):
    f = tmp_path / "b.yaml"
    f.write_text("- {address: 10.0.0.1, port: 80}\n- {address: 10.0.0.2, prot: 80}\n")
    code, _, err = run_offline(capsys, "backend", "set", "web", "-f", str(f))
    assert code == 2 and f"error: {f}: backends[1]:" in err and '"prot"' in err
    f.write_text("backends: 3\n")
    code, _, err = run_offline(capsys, "backend", "add", "web", "-f", str(f))
    assert code == 2 and "expected a list of backends" in err
    assert no_rpc == []


# --- output and exit codes ---------------------------------------------------------------------

def test_json_keeps_proto_field_names_and_prints_defaults():
    svc = api_pb2.Service(name="web", resource_version=5)
    svc.backends.add(address="10.0.0.1", port=80)
    d = json.loads(cli.to_json(svc))
    assert d["resource_version"] == "5" and d["traffic_policy"] == "TRAFFIC_POLICY_UNSPECIFIED"
    assert d["backends"][0] == {"address": "10.0.0.1", "port": 80, "weight": 0,
                                "state": "BACKEND_STATE_UNSPECIFIED", "node": "", "zone": ""}
    assert yaml.safe_load(cli.to_yaml(svc)) == d


def test_text_output_is_compact():
    svc = api_pb2.Service(name="web", resource_version=5, selection=types_pb2.SELECTION_MAGLEV)
    svc.frontends.add(address="fd00::10", port=80, protocol=types_pb2.PROTOCOL_UDP)
    svc.backends.add(address="10.0.0.1", port=80, weight=3, node="n1")
    svc.backends.add(address="::1", port=81, state=types_pb2.BACKEND_STATE_DRAINING)
    text = cli.render_text(svc)
    assert text.splitlines()[:3] == ["web  (version 5)", "  frontends: [fd00::10]:80/udp",
                                     "  selection maglev, affinity none, traffic cluster"]
    assert "10.0.0.1:80  3       active    n1" in text and "[::1]:81     1       draining  -" in text
    ev = api_pb2.WatchEvent(revision=9, type=api_pb2.WatchEvent.TYPE_DELETE, name="web")
    assert cli.render_text(ev) == "9 DELETE web"


def test_exit_code_mapping():
    import grpc

    c = grpc.StatusCode
    assert {code: cli.exit_code_for(code) for code in (
        c.INVALID_ARGUMENT, c.OUT_OF_RANGE, c.NOT_FOUND, c.ABORTED, c.ALREADY_EXISTS, c.FAILED_PRECONDITION,
        c.UNAVAILABLE, c.DEADLINE_EXCEEDED, c.INTERNAL, c.UNKNOWN, c.PERMISSION_DENIED, c.UNAUTHENTICATED)} == {
        c.INVALID_ARGUMENT: 2, c.OUT_OF_RANGE: 2, c.NOT_FOUND: 3, c.ABORTED: 4, c.ALREADY_EXISTS: 4,
        c.FAILED_PRECONDITION: 4, c.UNAVAILABLE: 5, c.DEADLINE_EXCEEDED: 5, c.INTERNAL: 1, c.UNKNOWN: 1,
        c.PERMISSION_DENIED: 6, c.UNAUTHENTICATED: 6}


def test_help_exits_0(capsys):
    assert cli.main(["--help"]) == 0
    assert "exit codes" in capsys.readouterr().out
    assert cli.main(["backend", "drain", "--help"]) == 0
    assert "--deadline SECONDS" in capsys.readouterr().out


# --- against a real control plane ----------------------------------------------------------------

class RunningControlPlane:
    """socklb.controlplane.server.ControlPlane on an embedded store, its grpc.aio loop in a thread."""

    def __init__(self, store_dir: Path):
        from socklb.controlplane.server import ControlPlane
        from socklb.controlplane.store import open_store

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="controlplane", daemon=True)
        self.thread.start()
        self.store = open_store(f"embedded://{store_dir}")
        self.cp = ControlPlane(self.store, "cli-test", duty_interval=0.2)
        port = self._run(self.cp.start("127.0.0.1:0"))
        self.address = f"127.0.0.1:{port}"

    def _run(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        try:
            self._run(self.cp.stop(), 10)
        finally:
            self.store.close()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


@pytest.fixture(scope="module")
def controlplane(tmp_path_factory):
    cp = RunningControlPlane(tmp_path_factory.mktemp("cli-store"))
    yield cp
    cp.close()


@pytest.fixture
def sl(controlplane, capsys):
    """socklb against the test control plane, in-process: (exit code, stdout, stderr)."""

    def run(*argv):
        code = cli.main(["--server", controlplane.address, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def ok_json(result):
    code, out, err = result
    assert (code, err) == (0, ""), err
    return json.loads(out)


def write_service(tmp_path: Path, name: str, vip: str, backends: str = "") -> Path:
    f = tmp_path / f"{name.replace('/', '_')}.yaml"
    f.write_text(f"name: {name}\nfrontends: [{{address: {vip}, port: 80, protocol: PROTOCOL_TCP}}]\n"
                 f"backends: [{backends}]\n")
    return f


def test_put_get_list_delete_round_trip(sl, tmp_path):
    f = tmp_path / "web.yaml"
    f.write_text(WEB)
    put = ok_json(sl("-o", "json", "service", "put", "-f", str(f)))
    version = int(put["resource_version"])
    assert version > 0 and put["name"] == "team/web"
    assert put["backends"][0] == {"address": "127.0.0.2", "port": 18080, "weight": 3,
                                  "state": "BACKEND_STATE_UNSPECIFIED", "node": "n1", "zone": "z1"}
    assert put["selection"] == "SELECTION_MAGLEV" and put["affinity"]["timeout_seconds"] == 30

    assert ok_json(sl("service", "get", "team/web", "-o", "json")) == put
    listed = ok_json(sl("service", "list", "-o", "json"))
    assert put in listed["services"] and int(listed["revision"]) >= version

    # Text is for people but says the essentials.
    code, out, _ = sl("service", "get", "team/web")
    assert code == 0 and out.startswith(f"team/web  (version {version})")
    assert "127.96.0.10:80/tcp, [fd00:96::10]:80/tcp" in out and "affinity client 30s" in out
    code, out, _ = sl("service", "list")
    assert code == 0 and f"team/web  127.96.0.10:80/tcp, [fd00:96::10]:80/tcp  2/2" in out

    # get -o yaml is a valid put file; writing what is stored changes nothing.
    y = tmp_path / "got.yaml"
    code, out, _ = sl("-o", "yaml", "service", "get", "team/web")
    y.write_text(out)
    assert ok_json(sl("-o", "json", "service", "put", "-f", str(y)))["resource_version"] == str(version)

    deleted = ok_json(sl("-o", "json", "service", "delete", "team/web"))
    assert deleted["existed"] is True and int(deleted["revision"]) > version
    code, out, err = sl("service", "get", "team/web")
    assert (code, out) == (3, "") and err == "error: NOT_FOUND: service 'team/web' does not exist\n"
    again = ok_json(sl("-o", "json", "service", "delete", "team/web"))
    assert again == {"revision": again["revision"], "existed": False}
    code, out, _ = sl("service", "delete", "team/web")
    assert (code, out) == (0, f"nothing to delete: team/web (revision {again['revision']})\n")


def test_backend_add_remove_drain_set(sl, tmp_path):
    sl("service", "put", "-f", str(write_service(tmp_path, "be", "127.96.1.1")))
    svc = ok_json(sl("-o", "json", "backend", "add", "be", "127.0.1.1:8080@3", "[fd00::1]:8080",
                     "--node", "n1", "--zone", "z1"))
    assert [(b["address"], b["port"], b["weight"], b["node"], b["zone"]) for b in svc["backends"]] == [
        ("127.0.1.1", 8080, 3, "n1", "z1"), ("fd00::1", 8080, 0, "n1", "z1")]

    # add replaces a backend with the same ADDR:PORT
    svc = ok_json(sl("-o", "json", "backend", "add", "be", "127.0.1.1:8080@5", "127.0.1.2:8080"))
    assert [(b["address"], b["weight"], b["node"]) for b in svc["backends"]] == [
        ("127.0.1.1", 5, ""), ("fd00::1", 0, "n1"), ("127.0.1.2", 0, "")]

    svc = ok_json(sl("-o", "json", "backend", "drain", "be", "127.0.1.2:8080", "--deadline", "3600"))
    drained = svc["backends"][2]
    assert drained["state"] == "BACKEND_STATE_DRAINING" and drained["drain_deadline"].endswith("Z")
    svc = ok_json(sl("-o", "json", "backend", "drain", "be", "127.0.1.1:8080"))
    assert svc["backends"][0]["state"] == "BACKEND_STATE_DRAINING" and "drain_deadline" not in svc["backends"][0]

    svc = ok_json(sl("-o", "json", "backend", "remove", "be", "127.0.1.1:8080", "[fd00::1]:8080",
                     "10.9.9.9:1", "--keep-sockets"))  # absent ones are ignored
    assert [b["address"] for b in svc["backends"]] == ["127.0.1.2"]

    f = tmp_path / "backends.yaml"
    f.write_text("- {address: 127.0.1.7, port: 0, weight: 2, zone: z7}\n")
    svc = ok_json(sl("-o", "json", "backend", "set", "be", "-f", str(f), "127.0.1.8:9000",
                     "--state", "quarantined"))
    assert [(b["address"], b["port"], b["weight"], b["zone"], b["state"]) for b in svc["backends"]] == [
        ("127.0.1.7", 0, 2, "z7", "BACKEND_STATE_UNSPECIFIED"),
        ("127.0.1.8", 9000, 0, "", "BACKEND_STATE_QUARANTINED")]

    code, out, _ = sl("backend", "set", "be", "127.0.1.9:80")
    assert code == 0 and "127.0.1.9:80  1       active" in out
    assert ok_json(sl("-o", "json", "backend", "set", "be", "--none"))["backends"] == []


def test_drain_deadline_is_carried_out(sl, tmp_path):
    sl("service", "put", "-f", str(write_service(tmp_path, "dl", "127.96.1.2",
                                                  "{address: 127.0.2.1, port: 80}, {address: 127.0.2.2, port: 80}")))
    assert sl("backend", "drain", "dl", "127.0.2.1:80", "--deadline", "1")[0] == 0
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        svc = ok_json(sl("-o", "json", "service", "get", "dl"))
        if [b["address"] for b in svc["backends"]] == ["127.0.2.2"]:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"drained backend still there: {svc['backends']}")


def test_server_errors_exit_codes(sl, tmp_path):
    f = write_service(tmp_path, "errs", "127.96.1.3", "{address: 127.0.3.1, port: 80}")
    version = ok_json(sl("-o", "json", "service", "put", "-f", str(f)))["resource_version"]

    # Bad input the CLI cannot know about: INVALID_ARGUMENT naming the field, exit 2, nothing written.
    # The exact text a user sees: the field of the request, then what is wrong with it.
    code, out, err = sl("backend", "set", "errs", "127.0.3.1:80", "10.0.0.300:80")
    assert (code, out, err) == (
        2, "", "error: INVALID_ARGUMENT: backends[1].address: '10.0.0.300' is not an IPv4 or IPv6 address\n")
    assert sl("backend", "add", "errs", "not-an-ip:80") == (
        2, "", "error: INVALID_ARGUMENT: backends[0].address: 'not-an-ip' is not an IPv4 or IPv6 address\n")
    assert sl("backend", "remove", "errs", "bad:80") == (
        2, "", "error: INVALID_ARGUMENT: backends[0].address: 'bad' is not an IPv4 or IPv6 address\n")
    assert sl("backend", "drain", "errs", "127.0.3.9:80") == (
        2, "", "error: INVALID_ARGUMENT: backends[0]: 127.0.3.9 port 80 is not a backend of service 'errs'\n")
    assert sl("backend", "set", "errs", "127.0.3.1:80@70000") == (
        2, "", "error: INVALID_ARGUMENT: backends[0].weight: 70000 exceeds 65535\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: errs\nfrontends: [{address: 127.96.1.3, port: 0}]\n")
    code, _, err = sl("service", "put", "-f", str(bad))
    assert code == 2 and err.startswith("error: INVALID_ARGUMENT: service.frontends[0].port: "), err
    code, _, err = sl("service", "get", "Not_A_Name")
    assert code == 2 and err.startswith("error: INVALID_ARGUMENT: name:")
    # @0 never reaches the server (it would store weight 1): refused locally, nothing written.
    assert sl("backend", "add", "errs", "127.0.3.7:80@0") == (
        2, "", "error: '127.0.3.7:80@0': weight 0 is refused: the API reads 0 as 1 "
               "(to send a backend no new flows, drain it)\n")
    assert ok_json(sl("-o", "json", "service", "get", "errs"))["resource_version"] == version

    # Missing service: NOT_FOUND, exit 3.
    for argv in (["backend", "add", "nope", "127.0.0.1:80"], ["backend", "remove", "nope", "127.0.0.1:80"],
                 ["backend", "drain", "nope", "127.0.0.1:80"], ["backend", "set", "nope", "--none"],
                 ["service", "get", "nope"]):
        code, out, err = sl(*argv)
        assert (code, out) == (3, "") and err.startswith("error: NOT_FOUND: ") and "nope" in err, argv

    # Conflicts: ABORTED / ALREADY_EXISTS, exit 4.
    stale = str(int(version) - 1)
    for argv in (["service", "put", "-f", str(f), "--expected-version", stale],
                 ["backend", "add", "errs", "127.0.3.2:80", "--expected-version", stale],
                 ["backend", "remove", "errs", "127.0.3.1:80", "--expected-version", stale],
                 ["service", "delete", "errs", "--expected-version", stale]):
        code, out, err = sl(*argv)
        assert (code, out) == (4, "") and err.startswith("error: ABORTED: "), (argv, err)
    code, _, err = sl("service", "put", "-f", str(f), "--create-only")
    assert code == 4 and err.startswith("error: ALREADY_EXISTS: ")
    # ... and with the right version it goes through.
    assert ok_json(sl("-o", "json", "service", "delete", "errs", "--expected-version", version))["existed"]


def test_unreachable_control_plane(capsys):
    address = f"127.0.0.1:{free_port()}"
    code, out, err = cli.main(["--server", address, "--timeout", "5", "service", "list"]), *capsys.readouterr()
    assert (code, out) == (5, "")
    assert err.startswith(f"error: UNAVAILABLE: cannot reach the control plane at {address}: "), err


def test_watch_count_replays_history(sl, tmp_path):
    rev = int(ok_json(sl("-o", "json", "service", "list"))["revision"])
    f = write_service(tmp_path, "w1", "127.96.1.4")
    v1 = int(ok_json(sl("-o", "json", "service", "put", "-f", str(f)))["resource_version"])
    v2 = int(ok_json(sl("-o", "json", "backend", "add", "w1", "127.0.4.1:80"))["resource_version"])
    v3 = int(ok_json(sl("-o", "json", "service", "delete", "w1"))["revision"])

    code, out, err = sl("-o", "json", "watch", "--from-revision", str(rev), "--count", "3")
    assert (code, err) == (0, "")
    events = [json.loads(line) for line in out.splitlines()]  # JSON Lines
    assert [(int(e["revision"]), e["type"], e["name"]) for e in events] == [
        (v1, "TYPE_PUT", "w1"), (v2, "TYPE_PUT", "w1"), (v3, "TYPE_DELETE", "w1")]
    assert events[1]["service"]["backends"][0]["address"] == "127.0.4.1"

    code, out, _ = sl("watch", "--from-revision", str(rev), "--count", "3")
    assert code == 0 and out.splitlines()[2] == f"{v3} DELETE w1"
    code, out, _ = sl("-o", "yaml", "watch", "--from-revision", str(v2), "--count", "1")
    assert code == 0 and list(yaml.safe_load_all(out))[0]["type"] == "TYPE_DELETE"

    # From 0: the current services first, as PUT events.
    sl("service", "put", "-f", str(write_service(tmp_path, "w2", "127.96.1.5")))
    names = {s["name"] for s in ok_json(sl("-o", "json", "service", "list"))["services"]}
    code, out, _ = sl("-o", "json", "watch", "--count", str(len(names)))
    assert code == 0 and {json.loads(line)["name"] for line in out.splitlines()} == names
    assert sl("watch", "--count", "0") == (0, "", "")


def test_nodes_and_stats(sl):
    assert ok_json(sl("-o", "json", "node", "list")) == {"nodes": []}
    assert ok_json(sl("-o", "json", "stats", "--service", "x", "--node", "n")) == {"services": [], "nodes": [], "workloads": []}
    code, out, _ = sl("node", "list")
    assert code == 0 and out.startswith("NAME  HEALTH  APPLIED/DESIRED")
    code, out, _ = sl("stats")
    assert code == 0 and "SERVICE  BACKEND  ACTIVE-FLOWS" in out and "NODE  ACTIVE-FLOWS" in out


# --- as a subprocess ---------------------------------------------------------------------------------

def socklb(*argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(SOCKLB), *argv], capture_output=True, text=True, timeout=60, **kw)


def test_console_script(controlplane, tmp_path):
    env = {**os.environ, "SOCKLB_SERVER": controlplane.address}
    p = socklb("-o", "json", "service", "put", "-f", "-", input=WEB.replace("team/web", "sub"), env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["name"] == "sub"
    p = socklb("service", "get", "missing", env=env)
    assert (p.returncode, p.stdout) == (3, "") and p.stderr.startswith("error: NOT_FOUND: ")
    p = socklb("backend", "add", "sub", "[::1]80", env=env)
    assert (p.returncode, p.stderr) == (2, "error: '[::1]80': expected [ADDR]:PORT\n")
    address = f"127.0.0.1:{free_port()}"
    p = socklb("--server", address, "node", "list", env=env)
    assert p.returncode == 5 and f"cannot reach the control plane at {address}" in p.stderr


def test_watch_streams_live_events(controlplane, sl, tmp_path):
    rev = ok_json(sl("-o", "json", "service", "list"))["revision"]
    watcher = subprocess.Popen([str(SOCKLB), "--server", controlplane.address, "-o", "json", "watch",
                                "--from-revision", rev, "--count", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = None
        sl("service", "put", "-f", str(write_service(tmp_path, "live", "127.96.1.6")))
        first = json.loads(watcher.stdout.readline())  # printed at once, not at exit
        assert (first["type"], first["name"]) == ("TYPE_PUT", "live")
        sl("service", "delete", "live")
        out, err = watcher.communicate(timeout=30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert watcher.returncode == 0, err
    assert [(json.loads(x)["type"], json.loads(x)["name"]) for x in out.splitlines()] == [("TYPE_DELETE", "live")]


def test_watch_ends_cleanly_on_ctrl_c(controlplane, sl, tmp_path):
    import signal

    sl("service", "put", "-f", str(write_service(tmp_path, "ctrl-c", "127.96.1.7")))
    watcher = subprocess.Popen([str(SOCKLB), "--server", controlplane.address, "watch"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout.readline()  # connected: the current services come first
        time.sleep(0.2)
        watcher.send_signal(signal.SIGINT)
        _, err = watcher.communicate(timeout=30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert (watcher.returncode, err) == (0, "")


def test_terminate_and_termination_commands(sl, tmp_path):
    f = write_service(tmp_path, "term/web", "127.96.7.1", "{address: 10.7.0.1, port: 80}")
    ok_json(sl("service", "put", "-f", str(f), "-o", "json"))
    # No node is connected: the request is recorded with nobody pending, and listed.
    term = ok_json(sl("terminate", "term/web", "10.7.0.1:80", "--dry-run", "--wait", "0", "-o", "json"))
    assert term["id"].startswith("t-") and term["dry_run"] and term["service"] == "term/web"
    got = ok_json(sl("termination", "get", term["id"], "-o", "json"))
    assert got["id"] == term["id"] and got["backends"] == [{"address": "10.7.0.1", "port": 80}]
    listed = ok_json(sl("termination", "list", "--service", "term/web", "-o", "json"))
    assert [t["id"] for t in listed["terminations"]] == [term["id"]]
    code, out, _ = sl("termination", "list")
    assert code == 0 and term["id"] in out
    code, _, err = sl("terminate", "term/none")
    assert code == 3 and "NOT_FOUND" in err
    code, _, err = sl("termination", "get", "t-nope")
    assert code == 3 and "NOT_FOUND" in err
    code, _, err = sl("terminate", "term/web", "300.1.1.1:80")
    assert code == 2 and "backends[0].address" in err
