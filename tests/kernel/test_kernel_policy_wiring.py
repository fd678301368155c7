"""A policy change reaches open sockets through the agent itself (issue 12,
"Changes reach open sockets"): a real agent process takes states through
its admin API, and once one is applied the sockets it newly denies die, in
every network namespace, and nothing else; its report (DumpTerminations)
has trigger "policy" and the counts. A change of services only makes no
policy job. A workload whose cgroup the agent finds later: the sockets its
processes opened meanwhile obey its policy too.

The node, its servers and clients are test_kernel_policy_termination's
(TCP idle, active and in CLOSE_WAIT, connected UDP, through VIPs and
direct; in the host namespace and two test namespaces; workloads w1, with a
cgroup below it, and w2; a cgroup "other" of no workload). The policy job
itself is tested there; here, what makes the agent run it.
"""
from __future__ import annotations

import json
import signal

import pytest
from google.protobuf import json_format

from netenv import frontend, node_state, poll, service
from support import free_port
from test_kernel_policy_termination import (DEAD_TCP, DEAD_UDP, EXTRA, OPEN, SHUT, VIP, node,  # noqa: F401
                                            wclients, workload_cgroups)

pytestmark = pytest.mark.agent


def full_state(node, version: int, w1_set: str, extra_services=()) -> dict:
    """The agent's services (its first state, backends and all), and the
    workloads and sets of Node.state(): w1 with w1_set, w2 closed."""
    base = json.loads(node.agent.state_file.read_text())
    policy = json_format.MessageToDict(node.state(version, w1_set), preserving_proto_field_name=True)
    return {**base, "version": version, "services": base["services"] + list(extra_services),
            "workloads": policy["workloads"], "policy_sets": policy["policy_sets"]}


def applied(agent, state: dict) -> None:
    r = agent.apply(state)
    assert r.returncode == 0, r.stdout + r.stderr


def reports(agent) -> dict[str, dict]:
    """The agent's recent termination reports by id."""
    return {r["id"]: r for r in agent.dump("terminations").get("reports", [])}


def report(agent, job_id: str) -> dict:
    got = poll(lambda: reports(agent).get(job_id), timeout=60, interval=0.2)
    assert got, (job_id, sorted(reports(agent)))
    return got


def settled(agent) -> None:
    """Whatever the last apply gave the terminations' worker is done: a job
    that work submits queues behind the first request, and the second one
    waits for it."""
    for _ in range(2):
        r = agent.cli("terminate", "web", "--dry-run", "--admin-socket", str(agent.socket))
        assert r.returncode == 0, r.stdout + r.stderr


def forget(node, dead) -> None:
    """Checks leave the sockets `dead` picks alone from now on: each said
    how it died once (a second call would say EPIPE)."""
    for client, kinds in node.kinds.items():
        for sid in [sid for sid in kinds if dead(client, sid)]:
            del kinds[sid]


def cookies(r: dict) -> set[int]:
    return {int(s["cookie"]) for s in r.get("sockets", [])}


@pytest.fixture(params=["kernel", "user"])
def judge(request, monkeypatch):
    """Who judges in the agents the test starts: the kernel (auto: its
    judge programs load here) or user space (SOCKLB_POLICY_JUDGE=user).
    Request it before the agent's fixtures."""
    monkeypatch.setenv("SOCKLB_POLICY_JUDGE", "auto" if request.param == "kernel" else "user")
    return request.param


def judged_as(agent, judge: str) -> None:
    """The agent says who judges, and its policy jobs were judged there."""
    caps = agent.dump("info")["capabilities"]
    assert caps["policy_kernel_judge"] == "yes", caps
    assert caps["policy_judge"] == ("kernel" if judge == "kernel" else
                                    "user: forced (SOCKLB_POLICY_JUDGE=user or --policy-judge user)"), caps
    assert ("policy judged in the kernel" in agent.log_text()) == (judge == "kernel")


def test_applied_policy_ends_exactly_the_denied_sockets_and_reports(judge, node):
    a = node.agent
    w2 = lambda client, sid: client == "w2-ns1"  # noqa: E731

    # w2 becomes restricted to a set that allows nothing: all its sockets die.
    want2 = node.cookies(w2)
    applied(a, full_state(node, 2, ""))
    r2 = report(a, "v2-policy")
    assert (r2["trigger"], r2["service"], r2["node"], r2["error"]) == ("policy", "", "test-node", ""), r2
    assert int(r2["found"]) == int(r2["destroyed"]) == len(want2) == 10 and cookies(r2) == set(want2), r2
    node.check(w2)
    forget(node, w2)

    # w1 gets a set that denies some of its destinations, in every namespace.
    want1 = node.cookies(node.denied)
    applied(a, full_state(node, 3, "ps-new"))
    r3 = report(a, "v3-policy")
    assert r3["trigger"] == "policy" and r3["method"] in ("kfunc", "netlink"), r3
    assert int(r3["found"]) == int(r3["destroyed"]) == len(want1) == 19 and int(r3.get("failed", 0)) == 0, r3
    assert cookies(r3) == set(want1) and r3["namespaces"] >= 3, r3
    assert len({s["netns"] for s in r3["sockets"]}) == 3  # the host's and both test namespaces
    per_destination = {(b["address"], b["port"]): int(b["found"]) for b in r3["backends"]}
    assert per_destination[(SHUT, node.direct["shut-tcp"][1])] == 6  # idle and active, 3 clients
    assert per_destination[(VIP, node.ports["api"])] == 6 and per_destination[(VIP, node.ports["dns"])] == 3
    node.check(node.denied)
    forget(node, node.denied)
    # New sockets obey it too: denied at once.
    c = node.clients["w1-ns2"]
    assert c.call("connect_error", addr=VIP, port=node.ports["api"])["error"] == "EPERM"

    # Services only: no policy job, every socket as it was.
    mark = a.log_len()
    tA = json.loads(a.state_file.read_text())["services"][0]["backends"][0]
    extra = service("extra", [frontend(VIP, free_port(VIP))], [tA])
    applied(a, full_state(node, 4, "ps-new", [extra]))
    settled(a)
    assert not [i for i in reports(a) if i.startswith("v4-")], sorted(reports(a))
    assert "v4-policy" not in a.log_text(mark)
    node.check()  # every socket left still works
    judged_as(a, judge)


@pytest.mark.parametrize("match", ["auto", "exact"])
def test_sockets_opened_before_the_agent_finds_the_cgroup_obey_its_policy(judge, agent, backends, clients, cgroup,
                                                                           netns_factory, match):
    """A workload registered before its cgroup exists; its processes (one
    in a cgroup below it) open sockets before the agent's re-check finds the
    cgroup (the agent is stopped meanwhile, so the hooks do not know the
    workload yet); once it finds it, the denied ones die, in both
    namespaces and below the workload's cgroup, with ancestor matching and
    with the exact-cgroup fallback (which must write the cgroup below too)."""
    ns1, ns2 = netns_factory(), netns_factory()
    servers = {ns: (backends("open", OPEN, 0, "tcp", ns), backends("shut", SHUT, 0, "tcp", ns),
                    backends("open-u", OPEN, 0, "udp", ns)) for ns in (ns1, ns2)}
    state = node_state(1)
    state["policy_sets"] = [{"name": "ps-tcp", "prefixes": [{"prefix": f"{OPEN}/32", "rules": [
        {"port": 0, "end_port": 65535, "protocol": "PROTOCOL_TCP", "action": "ACTION_ALLOW"}]}]}]
    state["workloads"] = [{"name": "late", "cgroup": f"{cgroup.rel.lstrip('/')}/late", "policy_set": "ps-tcp"}]
    a = agent(state, ["--workload-match", match])
    assert a.dump("info")["capabilities"]["workload_match"] == ("exact: forced" if match == "exact"
                                                                else "ancestor")
    assert not a.dump("workloads")["workloads"][0]["found"]

    a.signal(signal.SIGSTOP)
    try:
        late = cgroup.child("late")
        sub = late.child("sub")
        held = {}
        for (ns, (open_t, shut_t, open_u)), cg in zip(servers.items(), (late, sub)):
            c = clients(ns, cg=cg, extra=EXTRA)
            for sid, port in (("open", open_t.port), ("shut", shut_t.port)):
                assert "error" not in c.call("tcp_open", id=sid, addr=OPEN if sid == "open" else SHUT, port=port)
            c.call("tcp_active", id="open")
            assert c.call("udp_open", id="udp", addr=OPEN, port=open_u.port).get("backend") == "open-u"
            held[ns] = c
    finally:
        a.signal(signal.SIGCONT)

    r = poll(lambda: next((x for i, x in reports(a).items() if i.startswith("v1-policy-cgroup-test-node-")), None),
             timeout=60, interval=0.2)
    assert r and r["trigger"] == "policy", sorted(reports(a))
    assert int(r["found"]) == int(r["destroyed"]) == 4 and r["namespaces"] >= 3, r
    for ns, c in held.items():
        assert c.call("tcp_ping", id="shut").get("error") == DEAD_TCP
        assert c.call("udp_ping", id="udp").get("error") == DEAD_UDP
        assert "backend" in c.call("tcp_ping", id="open")
        st = c.call("active_status", id="open")
        assert st["error"] is None and st["ok"] > 0, st
        assert c.call("connect_error", addr=SHUT, port=servers[ns][1].port)["error"] == "EPERM"
    rows = a.dump("workloads")["workloads"]
    assert rows[0]["found"] and rows[0]["cgroups"] == (2 if match == "exact" else 1), rows  # exact: sub too
    judged_as(a, judge)
