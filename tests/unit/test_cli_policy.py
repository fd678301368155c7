"""`socklb workload|policy|redirect`: the worked examples of examples/policy/
round-tripped through a real control plane (put -f / get / list / delete,
text, json and yaml), the exit codes, the dry run, the workload status
columns, and files refused before anything is sent."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from socklb import cli
from socklb.cli.files import load_resource
from socklb.v1 import api_pb2, node_pb2, policy_pb2

from test_cli import controlplane, no_rpc, ok_json, run_offline, sl  # noqa: F401  (fixtures, used by name)
from test_policy_api import store_report

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples/policy"

# (command, example file, the message it holds)
RESOURCES = [
    ("workload", "workload.yaml", policy_pb2.Workload),
    ("workload", "bypass-workload.yaml", policy_pb2.Workload),
    ("policy", "access-policy.yaml", policy_pb2.Policy),
    ("redirect", "dns-redirect.yaml", policy_pb2.LocalRedirect),
]


def example(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())


def test_every_example_is_a_message_of_its_kind():
    assert sorted(p.name for p in EXAMPLES.iterdir()) == sorted(f for _, f, _ in RESOURCES)
    for _, name, message in RESOURCES:
        assert load_resource(str(EXAMPLES / name), message).name == example(name)["name"]


@pytest.mark.parametrize("command, name, message", RESOURCES, ids=[r[1] for r in RESOURCES])
def test_put_get_list_delete_round_trip(sl, tmp_path, command, name, message):  # noqa: F811
    f = str(EXAMPLES / name)
    resource = example(name)["name"]
    put = ok_json(sl("-o", "json", command, "put", "-f", f))
    version = int(put["resource_version"])
    assert version > 0 and put["name"] == resource
    assert ok_json(sl(command, "get", resource, "-o", "json")) == put
    listed = ok_json(sl(command, "list", "-o", "json"))
    assert put in next(v for k, v in listed.items() if k not in ("revision", "status"))
    assert int(listed["revision"]) >= version

    code, out, _ = sl(command, "get", resource)
    assert code == 0 and out.startswith(f"{resource}  (version {version})\n")
    code, out, _ = sl(command, "list")
    assert code == 0 and any(line.startswith(resource + " ") for line in out.splitlines()), out

    # get -o yaml is a valid put file; writing what is stored changes nothing.
    code, out, _ = sl("-o", "yaml", command, "get", resource)
    again = tmp_path / "again.yaml"
    again.write_text(out)
    assert ok_json(sl("-o", "json", command, "put", "-f", str(again)))["resource_version"] == str(version)
    # Conflicts exit 4 and change nothing.
    code, out, err = sl(command, "put", "-f", f, "--create-only")
    assert (code, out) == (4, "") and err.startswith("error: ALREADY_EXISTS: "), err
    code, out, err = sl(command, "delete", resource, "--expected-version", str(version - 1))
    assert (code, out) == (4, "") and err.startswith("error: ABORTED: "), err

    code, out, _ = sl(command, "delete", resource, "--expected-version", str(version))
    assert code == 0 and out.startswith(f"deleted {resource} (revision ")
    code, out, err = sl(command, "get", resource)
    assert (code, out) == (3, "") and err.startswith("error: NOT_FOUND: ") and repr(resource) in err
    gone = ok_json(sl("-o", "json", command, "delete", resource))
    assert gone["existed"] is False


def test_workload_list_shows_whether_the_node_found_the_cgroup(controlplane, sl, tmp_path):  # noqa: F811
    for name, cgroup in (("st/a", "socklb/a"), ("st/b", "socklb/b"), ("st/c", "socklb/c")):
        f = tmp_path / f"{name.replace('/', '-')}.yaml"
        f.write_text(f"name: {name}\nnode: node-st\ncgroup: {cgroup}\nlabels: {{app: st, tier: x}}\n"
                     f"bypass_socket_lb: {str(name == 'st/c').lower()}\n")
        assert sl("workload", "put", "-f", str(f))[0] == 0
    store_report(controlplane.store, "node-st", ("st/a", True, 4), ("st/b", False, 0))

    code, out, err = sl("workload", "list", "--node", "node-st")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "NODE", "CGROUP", "LABELS", "BYPASS", "STATUS", "DENIED", "VERSION"]
    rows = {line.split()[0]: line for line in lines[1:4]}
    # Every column but the version (the last).
    assert rows["st/a"].split()[1:-1] == ["node-st", "socklb/a", "app=st,tier=x", "no", "cgroup:", "found", "4"]
    assert rows["st/b"].split()[1:-1] == ["node-st", "socklb/b", "app=st,tier=x", "no", "cgroup:", "not", "found",
                                          "0"]
    assert rows["st/c"].split()[1:-1] == ["node-st", "socklb/c", "app=st,tier=x", "yes", "cgroup:", "not",
                                          "reported", "-"]
    assert lines[-1].startswith("(workloads: 3, revision ")

    listed = ok_json(sl("-o", "json", "workload", "list", "--node", "node-st"))
    assert [(s["name"], s["reported"], s["cgroup_found"], s["denied"]) for s in listed["status"]] == [
        ("st/a", True, True, "4"), ("st/b", True, False, "0"), ("st/c", False, False, "0")]
    assert ok_json(sl("-o", "json", "workload", "list", "--node", "elsewhere"))["workloads"] == []

    code, out, _ = sl("stats", "--node", "node-st")
    assert code == 0 and "WORKLOAD  STATUS" in out
    assert [line.split() for line in out.splitlines() if line.startswith("st/a ")] == [
        ["st/a", "cgroup:", "found", "4"]]


def test_text_of_a_policy_and_a_redirect(sl):  # noqa: F811
    sl("policy", "put", "-f", str(EXAMPLES / "access-policy.yaml"))
    code, out, _ = sl("policy", "get", "demo/web-egress")
    assert code == 0
    assert out.splitlines()[1:3] == ["  selector: app=web", "  egress rules: 2"]
    assert [line.split() for line in out.splitlines()[4:6]] == [
        ["0", "allow", "demo/db", "10.20.0.0/16", "-", "5432/tcp"], ["1", "deny", "-", "10.20.9.0/24", "-", "any"]]
    sl("redirect", "put", "-f", str(EXAMPLES / "dns-redirect.yaml"))
    code, out, _ = sl("redirect", "get", "kube-system/node-local-dns")
    assert code == 0 and out.splitlines()[1:] == [
        "  frontend: service kube-system/dns", "  to the workloads on the client's node with: app=node-local-dns",
        "  backend port: the frontend's"]


def test_port_ranges_in_text():
    p = policy_pb2.Policy(name="p", egress=[policy_pb2.EgressRule(
        action=policy_pb2.ACTION_DENY, to_services=["a", "b"],
        ports=[policy_pb2.PortRange(port=53), policy_pb2.PortRange(port=8000, end_port=8080, protocol=2),
               policy_pb2.PortRange(port=0, protocol=1)])])
    row = cli.render_text(p).splitlines()[4]
    assert row.split()[:4] == ["0", "deny", "a,", "b"], row
    assert row.endswith("  53/tcp+udp, 8000-8080/udp, any/tcp"), row
    assert cli.render_text(policy_pb2.Policy(name="q")).splitlines()[1] == "  selector: every workload"
    f = policy_pb2.Policy(name="f", egress=[policy_pb2.EgressRule(
        action=policy_pb2.ACTION_ALLOW, to_fqdns=["*.example.test", "api.example.org"],
        ports=[policy_pb2.PortRange(port=443, protocol=1)])])
    assert cli.render_text(f).splitlines()[4].split() == ["0", "allow", "-", "-", "*.example.test,", "api.example.org",
                                                           "443/tcp"]


def test_a_policy_termination_shows_whose_sockets_and_why():
    sock = node_pb2.TerminatedSocket(netns="net:[1]", state="ESTABLISHED", source="127.0.0.1:40000",
                                     destination="127.0.0.2:22", result=0, workload="demo/web-1",
                                     reason="policy set ps-1: no prefix holds 127.0.0.2:22/tcp")
    t = api_pb2.Termination(id="v7-policy", trigger="policy", reports=[
        node_pb2.TerminationReport(node="n1", found=1, destroyed=1, sockets=[sock])])
    lines = cli.render_text(t).splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("NODE  NETNS"))
    assert lines[head].split()[-2:] == ["WORKLOAD", "REASON"]
    assert lines[head + 1].split()[5:] == ["destroyed", "demo/web-1", "policy", "set", "ps-1:", "no", "prefix",
                                           "holds", "127.0.0.2:22/tcp"]
    # a service's termination has no such columns
    t.reports[0].sockets[0].ClearField("workload")
    t.reports[0].sockets[0].ClearField("reason")
    assert "WORKLOAD" not in cli.render_text(t)


def test_watch_names_the_kind(sl):  # noqa: F811
    sl("workload", "delete", "demo/web-1")
    sl("redirect", "delete", "kube-system/node-local-dns")
    rev = ok_json(sl("-o", "json", "policy", "list"))["revision"]
    w = ok_json(sl("-o", "json", "workload", "put", "-f", str(EXAMPLES / "workload.yaml")))
    r = ok_json(sl("-o", "json", "redirect", "put", "-f", str(EXAMPLES / "dns-redirect.yaml")))
    d = ok_json(sl("-o", "json", "workload", "delete", "demo/web-1"))
    code, out, _ = sl("-o", "json", "watch", "--from-revision", rev, "--count", "3")
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["kind"], e["type"], e["name"]) for e in events] == [
        ("RESOURCE_KIND_WORKLOAD", "TYPE_PUT", "demo/web-1"),
        ("RESOURCE_KIND_LOCAL_REDIRECT", "TYPE_PUT", "kube-system/node-local-dns"),
        ("RESOURCE_KIND_WORKLOAD", "TYPE_DELETE", "demo/web-1")]
    assert events[0]["workload"] == w and events[1]["local_redirect"] == r
    code, out, _ = sl("watch", "--from-revision", rev, "--count", "3")
    assert code == 0 and out.splitlines() == [
        f"{w['resource_version']} PUT demo/web-1  workload  node node-a  cgroup socklb/web-1",
        f"{r['resource_version']} PUT kube-system/node-local-dns  local-redirect  frontend service kube-system/dns",
        f"{d['revision']} DELETE demo/web-1  workload"]


@pytest.mark.parametrize("command", ["policy", "redirect"])
def test_a_dry_run_answers_the_preview_and_writes_nothing(sl, command):  # noqa: F811
    """No node is connected here: the preview asks no one and says so
    (tests/unit/test_policy_preview.py has nodes answering)."""
    f = EXAMPLES / ("access-policy.yaml" if command == "policy" else "dns-redirect.yaml")
    name = example(f.name)["name"]
    sl(command, "delete", name)
    before = ok_json(sl("-o", "json", command, "list"))
    code, out, err = sl(command, "put", "--dry-run", "-f", str(f))
    trigger, what = ("policy", "policy") if command == "policy" else ("local-redirect", "local redirect")
    assert (code, err) == (0, "") and out.startswith("termination t-"), out
    assert f"trigger {trigger}  (dry run)" in out and f"preview of {what} {name}: nothing written\n" in out
    assert "pending -\n" in out
    term = ok_json(sl("-o", "json", command, "put", "--dry-run", "--wait", "0", "-f", str(f)))
    assert term["dry_run"] and term["trigger"] == trigger and term["pending_nodes"] == []
    assert term["policy" if command == "policy" else "local_redirect"]["name"] == name
    assert sl(command, "get", name)[0] == 3
    # The list is the same; its revision (the store's) moved by the two termination records alone.
    after = ok_json(sl("-o", "json", command, "list"))
    assert int(after.pop("revision")) >= int(before.pop("revision")) + 2 and after == before


def test_server_refusals_name_the_field(sl, tmp_path):  # noqa: F811
    f = tmp_path / "fqdn.yaml"
    f.write_text("name: fq\negress: [{action: ACTION_ALLOW, to_fqdns: [example.com, 'a.*.example.com']}]\n")
    for argv in (("policy", "put", "-f", str(f)), ("policy", "put", "--dry-run", "-f", str(f))):
        assert sl(*argv) == (2, "", "error: INVALID_ARGUMENT: policy.egress[0].to_fqdns[1]: 'a.*.example.com': a "
                                    "wildcard stands only as the first label (`*.` or `**.`); one inside a label "
                                    "or further right is not supported\n")
    f.write_text("name: r\nservice: kube-system/dns\n")
    code, out, err = sl("redirect", "put", "-f", str(f))
    assert (code, out) == (2, "") and err.startswith("error: INVALID_ARGUMENT: local_redirect.selector: must not be "
                                                     "empty"), err
    assert sl("policy", "get", "fq")[0] == 3 and sl("redirect", "get", "r")[0] == 3


@pytest.mark.parametrize("command, content, problem", [
    ("workload", "", "the file is empty: expected a mapping (a socklb.v1.Workload)"),
    ("workload", "# nothing but a comment\n", "the file is empty"),
    ("policy", "name: p\negres: []\n", 'Message type "socklb.v1.Policy" has no field named "egres"'),
    ("policy", "name: p\negress: [{action: ACTION_MAYBE}]\n", "ACTION_MAYBE"),
    ("workload", "name: w\nnode: [n1, n2]\n", "node"),
    ("workload", "name: w\nbypass_socket_lb: sometimes\n", "bypass_socket_lb"),
    ("redirect", "- name: r\n", "expected a mapping (a socklb.v1.LocalRedirect), got list"),
    ("redirect", "name: r\n---\nname: s\n", "is not valid YAML/JSON"),
])
def test_bad_files_are_refused_before_anything_is_sent(tmp_path, capsys, no_rpc, command, content,  # noqa: F811
                                                       problem):
    f = tmp_path / "r.yaml"
    f.write_text(content)
    code, out, err = run_offline(capsys, command, "put", "-f", str(f))
    assert (code, out) == (2, "")
    assert err.startswith(f"error: {f}") and problem in err, err
    assert no_rpc == []


def test_workload_list_without_status_entries_renders():
    resp = api_pb2.ListWorkloadsResponse(workloads=[policy_pb2.Workload(name="x", node="n", cgroup="c")], revision=3)
    lines = cli.render_text(resp).splitlines()
    assert lines[1].split() == ["x", "n", "c", "-", "no", "cgroup:", "not", "reported", "-", "0"]
