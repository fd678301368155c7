"""Local redirects on a node, without a kernel: their targets in the
services map's redirect table (redirect_desired.py), the order the writes
take (plan.py's late masters, the policy plan's exemptions), the agent's
terminations on create and delete, and which sockets a new redirect takes
over."""
import copy
import socket

import pytest

from socklb.dataplane.agent import Agent
from socklb.dataplane.layout import SvcFlag, Table
from socklb.dataplane.plan import DeleteMaster, PutMaster, make_plan
from socklb.dataplane.redirect_desired import redirect_targets, taken_over
from socklb.dataplane.redirectjobs import RedirectJob, preview_job, preview_keep, run_redirect_job
from socklb.dataplane.statefile import parse_state
from socklb.dataplane.termjobs import Job, redirect_report
from socklb.dataplane.termtypes import ListedSocket, SocketListing
from socklb.dataplane.workloads import Cgroup, MemoryCgroups
from socklb.dataplane.writer import MemoryMapWriter
from socklb.lb.addresses import addr16
from socklb.lb.errors import InvalidState
from socklb.lb.frontends import FrontendKey, service_targets
from socklb.v1 import node_pb2, types_pb2

UDP, TCP = socket.IPPROTO_UDP, socket.IPPROTO_TCP
VIP = "127.96.0.10"

BASE = """
version: 1
services:
  - name: dns
    frontends: [{address: 127.96.0.10, port: 53, protocol: PROTOCOL_UDP},
                {address: 127.96.0.10, port: 53, protocol: PROTOCOL_TCP}]
    backends: [{address: 10.0.0.53, port: 53}]
  - name: web
    frontends: [{address: 127.96.0.1, port: 80}]
    backends: [{address: 10.0.0.2, port: 8080}]
workloads:
  - {name: kube-system/cache, cgroup: socklb/cache}
  - {name: default/app, cgroup: socklb/app}
  - {name: default/mesh, cgroup: socklb/mesh, bypass_socket_lb: true}
"""
REDIRECT = """
redirects:
  - name: node-local-dns
    frontends: [{address: 127.96.0.10, port: 53, protocol: PROTOCOL_UDP},
                {address: 127.96.0.10, port: 53, protocol: PROTOCOL_TCP}]
    backends: [{address: 169.254.20.10, port: 0}, {address: "fd00::10", port: 0}]
    exempt: [kube-system/cache]
"""
CGROUPS = {"socklb/cache": Cgroup(21), "socklb/app": Cgroup(22), "socklb/mesh": Cgroup(23)}


def key(addr: str, port: int, proto: int, table: int = 0) -> FrontendKey:
    return FrontendKey(addr16(addr), port, proto, table)


def state(version: int, redirect: bool = True, extra: str = "") -> node_pb2.NodeState:
    s = parse_state(BASE + (REDIRECT if redirect else "") + extra)
    s.version = version
    return s


class Recording(MemoryMapWriter):
    """A memory writer that remembers what it wrote, in order."""

    def __init__(self):
        super().__init__()
        self.log = []

    def put_master(self, key, master):
        self.log.append(("master", key.table, key.proto, master.flags))
        super().put_master(key, master)

    def delete_slot(self, key, slot):
        if slot == 0:
            self.log.append(("delete-master", key.table, key.proto))
        super().delete_slot(key, slot)

    def put_exempt(self, workload_id, frontend_id):
        self.log.append(("exempt", workload_id, frontend_id))
        super().put_exempt(workload_id, frontend_id)

    def delete_exempt(self, workload_id, frontend_id):
        self.log.append(("unexempt", workload_id, frontend_id))
        super().delete_exempt(workload_id, frontend_id)

    def put_workload(self, cgroup, entry):
        self.log.append(("workload", cgroup))
        super().put_workload(cgroup, entry)

    def put_policy_cfg(self, cfg):
        self.log.append(("cfg", cfg.cgroups))
        super().put_policy_cfg(cfg)


def node(writer=None):
    return Agent(writer or Recording(), "n", cgroups=MemoryCgroups(CGROUPS))


# --- targets ---------------------------------------------------------------------------------

def test_targets_flag_the_service_and_add_the_local_table():
    s = state(1)
    services = {t.key: t for svc in s.services for t in service_targets(svc, "s")}
    out = redirect_targets({r.name: r for r in s.redirects}, services.get)
    udp, local = key(VIP, 53, UDP), key(VIP, 53, UDP, Table.REDIRECT)
    assert set(out) == {udp, local, key(VIP, 53, TCP), key(VIP, 53, TCP, Table.REDIRECT)}
    assert out[udp].flags == SvcFlag.REDIRECTED and out[udp].backends == services[udp].backends
    # the local address of the frontend's family only, at the frontend's port
    assert [(b.addr, b.port) for b in out[local].backends] == [(addr16("169.254.20.10"), 53)]
    assert out[local].table == (0,) and out[local].service == "redirect:node-local-dns"


def test_an_address_that_is_no_vip_gets_a_placeholder_and_a_family_without_local_address_nothing():
    r = node_pb2.RedirectState(name="r", backends=[types_pb2.Backend(address="127.0.0.9", port=5353)], frontends=[
        types_pb2.Frontend(address="10.9.9.9", port=53, protocol=types_pb2.PROTOCOL_UDP),
        types_pb2.Frontend(address="fd00::53", port=53, protocol=types_pb2.PROTOCOL_UDP)])
    out = redirect_targets({"r": r}, lambda k: None)
    fe = key("10.9.9.9", 53, UDP)
    assert set(out) == {fe, fe.in_table(Table.REDIRECT)}  # fd00::53: no IPv6 local address, not redirected
    assert out[fe].flags == SvcFlag.REDIRECTED | SvcFlag.NOT_SERVICE and not out[fe].backends
    assert [b.port for b in out[fe.in_table(Table.REDIRECT)].backends] == [5353]


def test_two_redirects_of_one_frontend_are_refused():
    s = state(1)
    second = node_pb2.RedirectState()
    second.CopyFrom(s.redirects[0])
    second.name = "another"
    s.redirects.append(second)
    with pytest.raises(InvalidState) as e:
        node().apply(s)
    assert "already redirected" in str(e.value)


# --- plan order ------------------------------------------------------------------------------

def test_plan_writes_the_local_table_before_the_flag_and_clears_the_flag_before_deleting_it():
    s = state(1)
    services = {t.key: t for svc in s.services for t in service_targets(svc, "s")}
    plain = make_plan(make_plan(Recording().read_programmed(), services).result, services)
    assert not plain.ops and not plain.late
    start = make_plan(Recording().read_programmed(), services).result
    overlay = redirect_targets({r.name: r for r in s.redirects}, services.get)
    on = make_plan(start, {**services, **overlay})
    masters = [op.frontend.key for op in on.ops if isinstance(op, PutMaster)]
    assert {k.table for k in masters} == {Table.REDIRECT}  # the service masters only change their flag: late
    assert [op.frontend.flags for op in on.late] == [SvcFlag.REDIRECTED] * 2
    off = make_plan(on.result, services)
    kinds = [(type(op).__name__, op.key.table if isinstance(op, DeleteMaster) else op.frontend.key.table)
             for op in off.ops if isinstance(op, (PutMaster, DeleteMaster))]
    assert kinds == [("PutMaster", 0)] * 2 + [("DeleteMaster", 1)] * 2 and not off.late


# --- the agent ---------------------------------------------------------------------------------

def test_agent_writes_exemptions_and_workloads_before_the_flag():
    a = node()
    a.apply(state(1, redirect=False))
    assert a.writer.policy_cfg.cgroups and not a.writer.policy_cfg.exempt_only  # bypass: every connect looks
    a.writer.log.clear()
    a.apply(state(2))
    log = a.writer.log
    flagged = [i for i, e in enumerate(log) if e[0] == "master" and e[1] == 0 and e[3] & SvcFlag.REDIRECTED]
    exempt = [i for i, e in enumerate(log) if e[0] == "exempt"]
    assert len(flagged) == 2 and len(exempt) == 2 and max(exempt) < min(flagged), log
    cache_id = a.catalog.workloads()["kube-system/cache"].id
    local_ids = {fe.id for fe in a.catalog.current().frontends() if fe.key.table == Table.REDIRECT}
    assert a.writer.exempt == {(cache_id, fid) for fid in local_ids}


def test_exempt_workload_alone_turns_the_workload_lookup_on():
    s = parse_state(BASE.replace(", bypass_socket_lb: true", "") + REDIRECT)
    a = node()
    a.apply(s)
    assert a.writer.policy_cfg.cgroups > 0 and a.writer.exempt
    assert a.writer.policy_cfg.exempt_only  # looked up for the redirected frontends only
    s2 = parse_state(BASE.replace(", bypass_socket_lb: true", ""))
    s2.version = 2
    a.apply(s2)
    assert a.writer.policy_cfg.cgroups == 0 and not a.writer.exempt  # back to the zero-cost path
    assert not any(fe.flags for fe in a.catalog.current().frontends())


def test_create_takes_over_the_service_flows_and_delete_terminates_the_local_ones():
    a = node()
    a.apply(state(1, redirect=False))
    services = {fe.key: fe.id for fe in a.catalog.current().frontends()}
    a.apply(state(2))
    job = a.terminations.jobs[-1]
    assert isinstance(job, RedirectJob) and job.id == "v2-local-redirect" and job.service == "node-local-dns"
    assert set(job.frontend_ids) == {services[key(VIP, 53, UDP)], services[key(VIP, 53, TCP)]}
    assert job.keep_cgroups == {21, 23}  # the exempt cache's and the bypassing mesh's
    local = {fe.id for fe in a.catalog.current().frontends() if fe.key.table == Table.REDIRECT}
    a.apply(state(3, redirect=False))
    job = a.terminations.jobs[-1]
    assert isinstance(job, Job) and job.trigger == "local-redirect" and job.id == "v3-local-redirect-node-local-dns"
    assert job.service == "node-local-dns"
    assert {t.frontend_id for t in job.targets} == local and all(t.backend_id == 0 for t in job.targets)
    assert not a.writer.exempt and not any(fe.flags for fe in a.catalog.current().frontends())


def test_deltas_keep_the_flag_on_a_changed_service_and_redirect_by_name():
    a = node()
    a.apply(state(1))
    changed = node_pb2.ServiceState()
    changed.CopyFrom(a.state().services[0])
    changed.backends[0].address = "10.0.0.54"
    a.writer.log.clear()
    a.apply_delta(node_pb2.NodeStateDelta(from_version=1, version=2, upserts=[changed]))
    fes = {fe.key: fe for fe in a.catalog.current().frontends()}
    assert fes[key(VIP, 53, UDP)].flags == SvcFlag.REDIRECTED
    assert not any(e[0] == "master" and e[1] == 1 for e in a.writer.log)  # the redirect is untouched
    a.apply_delta(node_pb2.NodeStateDelta(from_version=2, version=3, redirect_removals=["node-local-dns"]))
    assert not any(k.table for k in a.catalog.current().programmed.frontends)
    assert a.terminations.jobs[-1].trigger == "local-redirect"
    a.apply_delta(node_pb2.NodeStateDelta(from_version=3, version=4, redirect_upserts=state(1).redirects))
    assert isinstance(a.terminations.jobs[-1], RedirectJob)
    assert sum(k.table for k in a.catalog.current().programmed.frontends) == 2
    fresh = node(writer=MemoryMapWriter())
    s = state(4)
    s.services[0].CopyFrom(changed)
    fresh.apply(s)
    assert shape(fresh) == shape(a)  # a delta lands where a whole state does (ids aside)


def shape(a: Agent) -> dict:
    prog = a.writer.read_programmed()
    return {k: (fe.flags, sorted((prog.backends[b].addr, prog.backends[b].port) for b in fe.slots))
            for k, fe in prog.frontends.items()}


def test_a_restart_adopts_the_redirect_and_rewrites_nothing():
    w = Recording()
    node(writer=w).apply(state(1))
    w.log.clear()
    again = node(writer=w)
    r = again.apply(state(1))
    assert r.frontends_written == 0 and r.policy_written == 0 and w.log == []


# --- which sockets a new redirect takes over --------------------------------------------------

def sock(cookie: int, cgroup: int, dst: str, dport: int, frontend_id: int = 0, proto: int = UDP) -> ListedSocket:
    return ListedSocket("net:[1]", cookie, cgroup, socket.AF_INET, proto, 1, addr16("127.0.0.1"), 40000,
                        addr16(dst), dport, frontend_id, 1 if frontend_id else 0, addr16(VIP), 53)


def test_taken_over_picks_the_service_flows_and_direct_sockets_to_a_placeholder_address():
    upstream = key("10.9.9.9", 53, UDP)
    sockets = [sock(1, 22, "10.0.0.53", 53, frontend_id=5),  # app, through the redirected service: taken
               sock(2, 21, "10.0.0.53", 53, frontend_id=5),  # the exempt cache: kept
               sock(3, 22, "169.254.20.10", 53, frontend_id=9),  # already on the redirect: kept
               sock(4, 22, "10.0.0.2", 8080, frontend_id=6),  # another service: kept
               sock(5, 22, "10.9.9.9", 53),                   # direct to the redirected address: taken
               sock(6, 22, "10.9.9.9", 53, proto=TCP),        # other protocol: kept
               sock(7, 23, "10.9.9.9", 53),                   # a bypassing workload: kept
               sock(8, 22, VIP, 53)]                          # unflowed to the VIP (bypass before): kept
    got = taken_over(sockets, [5], [upstream], {21, 23})
    assert [s.cookie for s in got] == [1, 5]


class FailingFlag(Recording):
    """Refuses the first write of a REDIRECTED master (the last write of a redirect's creation)."""

    def __init__(self):
        super().__init__()
        self.armed = True

    def put_master(self, key, master):
        if self.armed and master.flags & SvcFlag.REDIRECTED:
            self.armed = False
            raise OSError(28, "no space left in services")
        super().put_master(key, master)


def test_a_failed_write_restores_the_maps_without_the_redirect():
    w = FailingFlag()
    a = node(writer=w)
    a.apply(state(1, redirect=False))
    maps = lambda: copy.deepcopy((w.services, w.backends, w.workloads, w.exempt, w.policy_cfg))  # noqa: E731
    before = maps()
    with pytest.raises(OSError):
        a.apply(state(2))
    assert maps() == before
    assert a.applied_version == 1
    a.apply(state(2))
    assert w.exempt and any(m[0].flags for m in w.services.values() if 0 in m)


# --- a preview of a redirect change --------------------------------------------------------------

def test_preview_lists_what_starting_takes_over_and_what_ending_ends():
    a = node()
    a.apply(state(1, redirect=False))
    prog = a.catalog.current().programmed
    before, after = a.state(), state(2)
    assert preview_keep(before, after) == {"kube-system/cache", "default/mesh"}
    job = preview_job("p-1", before, after, prog, {21, 23})
    assert job.dry_run and job.service == "node-local-dns" and job.keep_cgroups == {21, 23}
    assert set(job.frontend_ids) == {prog.frontends[key(VIP, 53, UDP)].id, prog.frontends[key(VIP, 53, TCP)].id}
    assert not job.addresses and not job.local_ids
    assert preview_job("p-2", before, before, prog, ()) is None  # no redirect starts or ends

    a.apply(after)
    prog = a.catalog.current().programmed
    job = preview_job("p-3", a.state(), state(3, redirect=False), prog, ())
    local = {fe.id for k, fe in prog.frontends.items() if k.table == Table.REDIRECT}
    assert set(job.local_ids) == local and not job.frontend_ids


def test_a_preview_run_lists_and_destroys_nothing():
    class Lister:
        method = None

        def list_cgroups(self, ids):
            assert ids is None  # every cgroup
            return SocketListing(sockets=[sock(1, 22, "10.0.0.53", 53, frontend_id=5),
                                          sock(2, 22, "169.254.20.10", 53, frontend_id=9),
                                          sock(3, 21, "10.0.0.53", 53, frontend_id=5)])

        def destroy_cookies(self, sockets):
            raise AssertionError("a dry run destroys nothing")
    job = RedirectJob("p", "r", (5,), (), frozenset({21}), dry_run=True, local_ids=(9,))
    run = run_redirect_job(Lister(), job)
    assert [s.cookie for s in run.chosen] == [1, 2] and run.destroyed is None and run.method == "none"
    rep = redirect_report(job, "n", run)
    assert (rep.found, rep.destroyed, rep.trigger, rep.dry_run) == (2, 0, "local-redirect", True)
    assert [(b.address, b.port, b.found) for b in rep.backends] == [(VIP, 53, 2)]


def test_a_redirect_whose_local_workloads_cgroups_are_gone_is_not_programmed_and_comes_back():
    a = Agent(Recording(), "n", cgroups=MemoryCgroups({"socklb/app": Cgroup(22), "socklb/mesh": Cgroup(23)}))
    a.apply(state(1))  # the cache's cgroup is not on the node: its redirect programs nothing
    assert not any(k.table for k in a.catalog.current().programmed.frontends) and not a.writer.exempt
    assert not any(isinstance(j, RedirectJob) for j in a.terminations.jobs)
    assert [r.name for r in a.state().redirects] == ["node-local-dns"]  # kept as given

    a.policy.cgroups.cgroups["socklb/cache"] = Cgroup(21)
    assert a.recheck_workloads() is True
    fes = a.catalog.current().programmed.frontends
    assert sum(k.table for k in fes) == 2 and fes[key(VIP, 53, UDP)].flags == SvcFlag.REDIRECTED
    job = a.terminations.jobs[-1]
    assert isinstance(job, RedirectJob) and job.id.startswith("v1-local-redirect-cgroup-n-")
    assert a.writer.exempt and a.applied_version == 1

    del a.policy.cgroups.cgroups["socklb/cache"]
    assert a.recheck_workloads() is True
    assert not any(k.table for k in a.catalog.current().programmed.frontends) and not a.writer.exempt
    assert not any(fe.flags for fe in a.catalog.current().frontends())
    job = a.terminations.jobs[-1]
    assert job.trigger == "local-redirect" and job.id.startswith("v1-local-redirect-node-local-dns-cgroup-n-")
    assert a.recheck_workloads() is False
