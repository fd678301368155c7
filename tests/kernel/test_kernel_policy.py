"""Egress policy in the kernel: workloads are cgroups below the test cgroup,
their clients real processes in a network namespace of the test; a denied
connect()/sendmsg() fails with EPERM before anything leaves (no SYN, no
datagram: the namespace's own counters say so), is counted per node and per
workload, and leaves other workloads alone."""

import copy

import pytest

from netenv import Client, backend, cgroup_progs, frontend, node_state, poll, run, service

pytestmark = pytest.mark.agent

WEB = "127.96.0.70"  # VIPs; inside the test namespace, where 127/8 is local
DB = "127.96.0.71"
OTHER = "127.96.0.72"


# --- state --------------------------------------------------------------------------------

def rule(action: str, ports: str = "0-65535", proto: str = "") -> dict:
    lo, _, hi = ports.partition("-")
    r = {"port": int(lo), "end_port": int(hi or lo), "action": f"ACTION_{action.upper()}"}
    if proto:
        r["protocol"] = f"PROTOCOL_{proto.upper()}"
    return r


def policy_set(name: str, frontends=(), prefixes=None) -> dict:
    return {"name": name,
            "frontends": [{"service": svc, "frontend": fe, "action": f"ACTION_{act.upper()}"}
                          for svc, fe, act in frontends],
            "prefixes": [{"prefix": p, "rules": rules} for p, rules in (prefixes or {}).items()]}


def workload(name: str, cg, policy: str = "", bypass: bool = False) -> dict:
    return {"name": name, "cgroup": cg.rel.lstrip("/"), "policy_set": policy, "bypass_socket_lb": bypass}


# --- the namespace -------------------------------------------------------------------------

def snmp(ns) -> dict[str, int]:
    """The namespace's TCP ActiveOpens (SYNs sent) and UDP OutDatagrams."""
    text = run(["ip", "netns", "exec", ns.name, "cat", "/proc/net/snmp"]).stdout.splitlines()
    out = {}
    for head, values in zip(text[::2], text[1::2]):
        proto, names = head.split(":", 1)
        out |= {f"{proto}.{k}": int(v) for k, v in zip(names.split(), values.split(":", 1)[1].split())}
    return {"syns": out["Tcp.ActiveOpens"], "datagrams": out["Udp.OutDatagrams"]}


class Net:
    """The test namespace: three services behind VIPs, and servers reached
    directly, each a backend thread that counts what reaches it."""

    def __init__(self, ns, backends):
        self.ns = ns
        b = lambda name, addr, proto="tcp", port=0: backends(name, addr, port, proto, ns)  # noqa: E731
        self.web, self.db, self.dns = b("web-0", "127.0.0.2"), b("db-0", "127.0.0.2"), b("dns-0", "127.0.0.2", "udp")
        self.open = b("open", "127.0.0.4")           # 127.0.0.0/24 allows every port ...
        self.denied = b("denied", "127.0.0.4")       # ... but a DENY rule takes this port: deny wins
        self.only = b("only", "127.0.1.1")           # 127.0.1.0/24 allows this TCP port only
        self.other = b("other", "127.0.1.1")
        self.nowhere = b("nowhere", "127.0.2.1")     # in no prefix
        self.open_u = b("open-u", "127.0.0.4", "udp")
        self.only_u = b("only-u", "127.0.1.1", "udp", self.only.port)  # the TCP-only port, over UDP
        self.nowhere_u = b("nowhere-u", "127.0.2.1", "udp")
        self.v6 = b("v6", "::1")
        self.v6_no = b("v6-no", "::1")
        self.port = 80
        self.dns_port = 53

    def state(self, version: int, workloads: list[dict], sets: list[dict] | None = None) -> dict:
        s = node_state(version, *self.services())
        s["policy_sets"] = [self.policy()] if sets is None else sets
        s["workloads"] = workloads
        return s

    def services(self) -> list[dict]:
        return [service("web", [frontend(WEB, self.port)], [backend(self.web)]),
                service("db", [frontend(DB, self.port)], [backend(self.db)]),
                service("other", [frontend(OTHER, self.port)], [backend(self.web)]),
                service("dns", [frontend(WEB, self.dns_port, "udp")], [backend(self.dns)])]

    def policy(self, name: str = "ps-a") -> dict:
        return policy_set(
            name,
            frontends=[("web", frontend(WEB, self.port), "allow"), ("db", frontend(DB, self.port), "deny"),
                       ("dns", frontend(WEB, self.dns_port, "udp"), "allow")],
            prefixes={"127.0.0.0/24": [rule("allow"), rule("deny", str(self.denied.port), "tcp")],
                      "127.0.1.0/24": [rule("allow", str(self.only.port), "tcp")],
                      # VIPs are decided by their verdicts alone, whatever a prefix says
                      "127.96.0.0/16": [rule("allow")],
                      "::1/128": [rule("allow", str(self.v6.port), "tcp")]})

    def allowed(self, c: Client) -> None:
        """What the policy allows works (and is translated where it is a VIP)."""
        ok = lambda r, name, n: r["errors"] == {} and r["counts"] == {name: n}  # noqa: E731
        for addr, port, name in ((WEB, self.port, "web-0"), (self.open.addr, self.open.port, "open"),
                                 (self.only.addr, self.only.port, "only"), ("::1", self.v6.port, "v6")):
            r = c.call("tcp_many", addr=addr, port=port, n=2)
            assert ok(r, name, 2), (addr, port, r)
        for addr, port, name in ((WEB, self.dns_port, "dns-0"), (self.open_u.addr, self.open_u.port, "open-u")):
            r = c.call("udp_sendto", addr=addr, port=port, n=2)
            assert ok(r, name, 2), (addr, port, r)

    def denied_calls(self, c: Client) -> int:
        """What the policy denies fails with EPERM, and nothing leaves: the
        namespace sent no SYN and no datagram, no server saw anything.
        Returns how many calls were denied."""
        before = snmp(self.ns)
        calls = [("connect_error", dict(addr=DB, port=self.port)),                  # verdict DENY
                 ("connect_error", dict(addr=OTHER, port=self.port)),               # no verdict
                 ("connect_error", dict(addr=self.denied.addr, port=self.denied.port)),  # DENY rule wins
                 ("connect_error", dict(addr=self.other.addr, port=self.other.port)),    # no rule matches
                 ("connect_error", dict(addr=self.nowhere.addr, port=self.nowhere.port)),  # no prefix
                 ("connect_error", dict(addr="::1", port=self.v6_no.port)),
                 ("sendto_error", dict(addr=self.only_u.addr, port=self.only_u.port)),   # TCP-only rule
                 ("sendto_error", dict(addr=self.nowhere_u.addr, port=self.nowhere_u.port)),
                 ("connect_error", dict(addr=self.nowhere_u.addr, port=self.nowhere_u.port, proto="udp"))]
        for op, kw in calls:
            r = c.call(op, **kw)
            assert r["error"] == "EPERM", (op, kw, r)
        assert snmp(self.ns) == before
        return len(calls)

    def untouched(self) -> None:
        for b in (self.db, self.denied, self.other, self.nowhere):
            assert b.accepted == 0, b.label
        for b in (self.only_u, self.nowhere_u):
            assert b.requests == 0, b.label

    def unrestricted(self, c: Client) -> None:
        """A process of no restricted workload reaches everything."""
        for addr, port, name in ((DB, self.port, "db-0"), (self.nowhere.addr, self.nowhere.port, "nowhere")):
            r = c.call("tcp_many", addr=addr, port=port, n=1)
            assert r["errors"] == {} and r["counts"] == {name: 1}, r
        r = c.call("udp_sendto", addr=self.only_u.addr, port=self.only_u.port, n=1)
        assert r["errors"] == {} and r["counts"] == {"only-u": 1}, r


def denials(a) -> dict[str, int]:
    """Denials per workload (dump workloads) and per node (`node`)."""
    rows = a.dump("workloads")["workloads"]
    out = {w["name"]: int(w.get("denied", 0)) for w in rows}
    out["node"] = int(a.dump("counters").get("policyDenies", 0))
    return out


# --- tests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("match", ["auto", "exact"])
def test_allow_deny_by_frontend_cidr_and_port(agent, backends, netns, clients, cgroup, match):
    """The same allow/deny table for a workload, for a process in a cgroup
    below it, with ancestor matching and with the exact-cgroup fallback."""
    net = Net(netns, backends)
    wl_a, wl_free = cgroup.child("wl-a"), cgroup.child("wl-free")
    sub = wl_a.child("sub")
    a = agent(net.state(1, [workload("team/a", wl_a, "ps-a"), workload("team/free", wl_free)]),
              ["--workload-match", match])
    caps = a.dump("info")["capabilities"]
    assert caps["workload_match"] == ("exact: forced" if match == "exact" else "ancestor"), caps
    assert caps["ancestor_cgroup_id"] == "yes", caps

    n = 0
    for cg in (wl_a, sub):
        c = clients(netns, cg=cg)
        net.allowed(c)
        n += net.denied_calls(c)
    net.untouched()
    for cg in (wl_free, cgroup):  # unrestricted workload; no workload at all
        net.unrestricted(clients(netns, cg=cg))

    assert denials(a) == {"team/a": n, "team/free": 0, "node": n}
    rows = {w["name"]: w for w in a.dump("workloads")["workloads"]}
    assert rows["team/a"]["found"] and rows["team/a"]["programmedSet"] == "ps-a", rows
    assert rows["team/a"]["cgroups"] == (2 if match == "exact" else 1), rows  # exact: sub written too
    sets = a.dump("policy")["policySets"]
    assert [(s["name"], s["workloads"]) for s in sets] == [("ps-a", ["team/a"])], sets
    verdicts = {(v["service"], v["action"]) for v in sets[0]["frontends"]}
    assert verdicts == {("web", "ALLOW"), ("db", "DENY"), ("dns", "ALLOW")}, sets


def test_policy_change_applies_to_new_sockets(agent, backends, netns, clients, cgroup):
    """A new set (and an edited one) decides the next connect(); what both
    allow keeps working throughout."""
    net = Net(netns, backends)
    wl = cgroup.child("wl")
    a = agent(net.state(1, [workload("w", wl, "ps-a")]))
    c = clients(netns, cg=wl)
    c.call("loop_start", addr=WEB, port=net.port, max=1_000_000, interval=0.002)

    # db allowed now, web still; the open port of 127.0.0.4 denied.
    ps_b = net.policy("ps-b")
    ps_b["frontends"][1]["action"] = "ACTION_ALLOW"
    ps_b["prefixes"][0]["rules"] = [rule("allow", str(net.denied.port), "tcp")]
    state = net.state(2, [workload("w", wl, "ps-b")], [ps_b])
    r = a.apply(state)
    assert r.returncode == 0, r.stdout + r.stderr
    assert c.call("tcp_many", addr=DB, port=net.port, n=1)["counts"] == {"db-0": 1}
    assert c.call("connect_error", addr=net.open.addr, port=net.open.port)["error"] == "EPERM"
    assert c.call("tcp_many", addr=net.denied.addr, port=net.denied.port, n=1)["counts"] == {"denied": 1}

    # The same set edited in place.
    ps_b["prefixes"][0]["rules"] = [rule("allow")]
    state["version"] = 3
    r = a.apply(state)
    assert r.returncode == 0, r.stdout + r.stderr
    assert c.call("tcp_many", addr=net.open.addr, port=net.open.port, n=1)["counts"] == {"open": 1}
    assert [s["name"] for s in a.dump("policy")["policySets"]] == ["ps-b"]

    status = c.call("loop_stop")
    assert status["failed"] == 0 and status["ok"] > 0, status


def test_bypass_on_and_off_at_runtime(agent, backends, netns, clients, cgroup):
    """A bypassing workload's new sockets reach the VIP itself (a sidecar
    listens there); flows opened before keep their backend; switching back
    translates again. Same programs throughout: no re-attach."""
    web = backends("web-0", "127.0.0.2", netns=netns)
    sidecar = backends("sidecar", WEB, netns=netns)
    sidecar_u = backends("sidecar-u", WEB, sidecar.port, "udp", netns)
    dns = backends("dns-0", "127.0.0.2", proto="udp", netns=netns)
    wl = cgroup.child("mesh")

    def state(version, bypass):
        s = node_state(version, service("web", [frontend(WEB, sidecar.port)], [backend(web)]),
                       service("dns", [frontend(WEB, sidecar.port, "udp")], [backend(dns)]))
        s["workloads"] = [workload("mesh", wl, bypass=bypass)]
        return s

    a = agent(state(1, False))
    progs = sorted(p["id"] for p in cgroup_progs(cgroup.path))
    c = clients(netns, cg=wl)

    def reached() -> tuple[str, str]:
        tcp = c.call("tcp_many", addr=WEB, port=sidecar.port, n=1)["counts"]
        udp = c.call("udp_sendto", addr=WEB, port=sidecar.port, n=1)["counts"]
        return next(iter(tcp)), next(iter(udp))

    assert reached() == ("web-0", "dns-0")
    assert c.call("tcp_open", id="before", addr=WEB, port=sidecar.port)["backend"] == "web-0"

    assert a.apply(state(2, True)).returncode == 0
    assert reached() == ("sidecar", "sidecar-u")
    assert c.call("tcp_ping", id="before")["backend"] == "web-0"  # the open flow keeps its backend

    assert a.apply(state(3, False)).returncode == 0
    assert reached() == ("web-0", "dns-0")
    assert c.call("tcp_ping", id="before")["backend"] == "web-0"
    assert sorted(p["id"] for p in cgroup_progs(cgroup.path)) == progs


def test_workload_cgroup_appearing_later_is_picked_up(agent, backends, netns, clients, cgroup):
    """A workload registered before its cgroup exists programs nothing and is
    reported not found; once the cgroup appears the agent enforces its
    policy within seconds, and notices it going and coming back (a new
    cgroup id)."""
    target = backends("target", "127.0.0.4", netns=netns)
    state = node_state(1)
    state["policy_sets"] = [policy_set("nothing")]  # allows nothing
    path = cgroup.path / "late"
    state["workloads"] = [{"name": "late", "cgroup": f"{cgroup.rel.lstrip('/')}/late", "policy_set": "nothing"}]
    a = agent(state)
    row = a.dump("workloads")["workloads"][0]
    assert not row["found"] and not row["programmed"], row
    assert a.dump("policy")["policySets"] == []

    for round_ in range(2):
        late = cgroup.child("late")
        c = clients(netns, cg=late)
        # Bounded wait for the periodic re-check (every 2 s), no new state.
        assert poll(lambda: c.call("connect_error", addr=target.addr, port=target.port)["error"] == "EPERM",
                    timeout=30, interval=0.2), round_
        row = a.dump("workloads")["workloads"][0]
        assert row["found"] and row["programmed"] and row["cgroupId"] == path.stat().st_ino, row
        c.close()
        late.remove()
        assert poll(lambda: not a.dump("workloads")["workloads"][0]["found"], timeout=30, interval=0.2)


BAD = {
    "unknown set": (lambda s: s["workloads"].__setitem__(0, {**s["workloads"][0], "policy_set": "ps-x"}),
                    "workloads[0].policy_set"),
    "same cgroup twice": (lambda s: s["workloads"].append({**s["workloads"][0], "name": "copy"}),
                          "workloads[1].cgroup"),
    "duplicate name": (lambda s: s["workloads"].append({**s["workloads"][0], "cgroup": "elsewhere"}),
                       "workloads[1].name"),
    "bad prefix": (lambda s: s["policy_sets"][0]["prefixes"][0].__setitem__("prefix", "127.0.0.1/8"),
                   "policy_sets[0].prefixes[0].prefix"),
    "reversed ports": (lambda s: s["policy_sets"][0]["prefixes"][0]["rules"].append(
        {"port": 90, "end_port": 80, "action": "ACTION_ALLOW"}), "policy_sets[0].prefixes[0].rules[2].end_port"),
    "no action": (lambda s: s["policy_sets"][0]["frontends"][0].pop("action"), "policy_sets[0].frontends[0].action"),
    "too many rules": (lambda s: s["policy_sets"][0]["prefixes"][1].__setitem__(
        "rules", [rule("allow", str(p)) for p in range(1, 18)]), "policy_sets[0].prefixes[1].rules"),
    "cgroup outside the mount": (lambda s: s["workloads"][0].__setitem__("cgroup", "a/../../b"),
                                 "workloads[0].cgroup"),
}


@pytest.mark.parametrize("bad", sorted(BAD))
def test_invalid_policy_state_is_refused_and_changes_nothing(agent, backends, netns, clients, cgroup, bad):
    net = Net(netns, backends)
    wl = cgroup.child("wl")
    good = net.state(1, [workload("w", wl, "ps-a")])
    a = agent(good)
    before = {k: a.dump(k) for k in ("state", "workloads", "policy", "services")}

    broken = copy.deepcopy(good)
    broken["version"] = 2
    change, field = BAD[bad]
    change(broken)
    r = a.apply(broken)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and field in out, out
    assert {k: a.dump(k) for k in before} == before
    c = clients(netns, cg=wl)
    assert c.call("connect_error", addr=DB, port=net.port)["error"] == "EPERM"

    # The node keeps taking changes.
    good["version"] = 3
    good["workloads"] = []
    assert a.apply(good).returncode == 0
    assert c.call("tcp_many", addr=DB, port=net.port, n=1)["counts"] == {"db-0": 1}


def test_restart_keeps_enforcing_and_adopts(agent, backends, netns, clients, cgroup):
    """A killed agent leaves the policy enforced (the maps are pinned); a new
    one adopts the entries as they are: same ids, nothing rewritten."""
    net = Net(netns, backends)
    wl = cgroup.child("wl")
    a = agent(net.state(1, [workload("w", wl, "ps-a")]))
    c = clients(netns, cg=wl)
    n = net.denied_calls(c)
    before = (a.dump("workloads"), a.dump("policy"))
    a.kill()
    assert c.call("connect_error", addr=DB, port=net.port)["error"] == "EPERM"
    mark = a.log_len()
    a.start()
    assert a.wait_log(r"applied version 1: .*policy_written=0, policy_removed=0", since=mark, timeout=30), \
        a.log_text(mark)
    after = (a.dump("workloads"), a.dump("policy"))
    assert after[1] == before[1]
    assert [{k: v for k, v in w.items() if k != "denied"} for w in after[0]["workloads"]] == \
        [{k: v for k, v in w.items() if k != "denied"} for w in before[0]["workloads"]]
    assert denials(a)["w"] == n + 1
    net.allowed(c)


def test_ipv4_and_ipv6_prefixes_are_apart(agent, backends, netns, clients, cgroup):
    """An IPv6 prefix holding ::ffff:0:0/96 (::/0) allows IPv6 destinations
    only, 0.0.0.0/0 IPv4 ones only (v4-mapped ones of IPv6 sockets too), as
    the node's evaluator judges them; a prefix written inside ::ffff:0:0/96
    is the IPv4 one. Denials fail with EPERM and send nothing."""
    v4, v4_u = backends("v4", "127.0.0.4", netns=netns), backends("v4-u", "127.0.0.4", proto="udp", netns=netns)
    v6, v6_u = backends("v6", "::1", netns=netns), backends("v6-u", "::1", proto="udp", netns=netns)
    mapped = "::ffff:127.0.0.4"  # an IPv6 socket's v4-mapped destination: the connect6/sendmsg6 hooks
    wls = {name: cgroup.child(name) for name in ("only6", "only4", "in-v6")}
    state = node_state(1)
    state["policy_sets"] = [policy_set("ps-6", prefixes={"::/0": [rule("allow")]}),
                            policy_set("ps-4", prefixes={"0.0.0.0/0": [rule("allow")]}),
                            policy_set("ps-m", prefixes={"::ffff:127.0.0.0/104": [rule("allow")]})]
    state["workloads"] = [workload("only6", wls["only6"], "ps-6"), workload("only4", wls["only4"], "ps-4"),
                          workload("in-v6", wls["in-v6"], "ps-m")]
    a = agent(state)

    def check(name: str, allowed: bool, ipv6: bool) -> int:
        c = clients(netns, cg=wls[name])
        targets = [("::1", v6, v6_u)] if ipv6 else [("127.0.0.4", v4, v4_u), (mapped, v4, v4_u)]
        before = snmp(netns)
        for addr, tcp, udp in targets:
            if allowed:
                r = c.call("tcp_many", addr=addr, port=tcp.port, n=1)
                assert r["errors"] == {} and r["counts"] == {tcp.label: 1}, (name, addr, r)
                r = c.call("udp_sendto", addr=addr, port=udp.port, n=1)
                assert r["errors"] == {} and r["counts"] == {udp.label: 1}, (name, addr, r)
            else:
                assert c.call("connect_error", addr=addr, port=tcp.port)["error"] == "EPERM", (name, addr)
                assert c.call("sendto_error", addr=addr, port=udp.port)["error"] == "EPERM", (name, addr)
        if not allowed:
            assert snmp(netns) == before, name
        return 0 if allowed else 2 * len(targets)

    denied = {"only6": check("only6", True, True) + check("only6", False, False),
              "only4": check("only4", True, False) + check("only4", False, True),
              "in-v6": check("in-v6", True, False) + check("in-v6", False, True)}
    assert denied == {"only6": 4, "only4": 2, "in-v6": 2}
    assert (v4.accepted, v4_u.requests, v6.accepted, v6_u.requests) == (4, 4, 1, 1)  # only what was allowed
    assert denials(a) == {**denied, "node": sum(denied.values())}
    prefixes = {s["name"]: [p["prefix"] for p in s["prefixes"]] for s in a.dump("policy")["policySets"]}
    assert prefixes == {"ps-6": ["::/0"], "ps-4": ["0.0.0.0/0"], "ps-m": ["127.0.0.0/8"]}, prefixes


