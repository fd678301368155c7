"""The node's statistics report is built part by part: a part that cannot be
read leaves the others in the report, is named with its reason, is logged
once per reason, and reaches `socklb stats` and `socklb node list` through a
real control plane."""
import logging

import pytest

from socklb import cli
from socklb.dataplane.features import Unavailable
from socklb.dataplane.stats import PARTS, StatsReporter, flow_counts
from socklb.dataplane import layout
from socklb.dataplane.sync_client import SyncClient
from socklb.dataplane.agent import Agent
from socklb.dataplane.writer import MemoryMapWriter
from socklb.v1 import api_pb2, node_pb2, sync_pb2, types_pb2

from test_sync import wait_for

REFUSED = "map-element iterators are refused by this kernel: Operation not permitted"


def sockets():
    return [node_pb2.SocketStats(service="web", backend_address="10.0.0.1", backend_port=80,
                                 protocol=types_pb2.PROTOCOL_TCP, sockets=3)]


def flows():
    return [sync_pb2.FlowCount(service="web", backend_address="10.0.0.1", backend_port=80, active=3)]


def workloads():
    return [sync_pb2.WorkloadReport(name="team/a", cgroup_found=True, denied=2)]


class Switch:
    """A part that fails with `why` while it is set."""

    def __init__(self, value):
        self.value = value
        self.why = None

    def __call__(self):
        if self.why is not None:
            raise Unavailable(self.why)
        return self.value()


def test_a_failing_part_leaves_the_others_in_the_report():
    counters = node_pb2.Counters(translations=7, no_backend=2)
    rep = StatsReporter({"counters": lambda: counters, "flows": Switch(flows), "socket_stats": sockets})
    rep.parts["flows"].why = REFUSED
    r = rep.report()
    assert dict(r.unavailable) == {"flows": REFUSED}
    assert r.counters == counters
    assert list(r.sockets) == sockets()
    assert list(r.flows) == []
    assert r.health == f"flows unavailable: {REFUSED}"


@pytest.mark.parametrize("failing", PARTS)
def test_each_part_can_fail_alone(failing):
    parts = {"counters": Switch(lambda: node_pb2.Counters(translations=1)), "flows": Switch(flows),
             "socket_stats": Switch(sockets), "workloads": Switch(workloads)}
    parts[failing].why = f"{failing} broke"
    r = StatsReporter(parts).report()
    assert dict(r.unavailable) == {failing: f"{failing} broke"}
    assert r.HasField("counters") == (failing != "counters")
    assert len(r.flows) == (0 if failing == "flows" else 1)
    assert len(r.sockets) == (0 if failing == "socket_stats" else 1)
    assert len(r.workloads) == (0 if failing == "workloads" else 1)


def test_a_reason_is_logged_once_and_again_when_it_changes(caplog):
    part = Switch(flows)
    rep = StatsReporter({"flows": part})
    caplog.set_level(logging.INFO, logger="socklb.dataplane.stats")

    def lines():
        return [r.getMessage() for r in caplog.records if r.name == "socklb.dataplane.stats"]

    part.why = "first"
    for _ in range(5):
        rep.report()
    assert lines() == ["statistics: flows unavailable: first"]
    part.why = "second"
    rep.report()
    rep.report()
    part.why = None
    assert list(rep.report().flows) == flows()
    rep.report()
    assert lines() == ["statistics: flows unavailable: first", "statistics: flows unavailable: second",
                       "statistics: flows available again"]
    assert not any(r.exc_info for r in caplog.records if r.levelno >= logging.WARNING)


def test_unknown_part_is_refused():
    with pytest.raises(ValueError, match="sockets"):
        StatsReporter({"sockets": sockets})


def test_flow_counts_group_by_service_and_backend():
    def key(fe, addr, port):
        return fe, layout.addr16(addr), layout.port_be(port)

    counts = {key(1, "10.0.0.1", 80): 3, key(1, "10.0.0.2", 80): 1, key(2, "fd00::1", 53): 1,
              key(3, "10.0.0.1", 80): 2, key(9, "10.0.0.9", 1): 4}
    got = [(c.service, c.backend_address, c.backend_port, c.active)
           for c in flow_counts(counts, {1: "web", 2: "dns", 3: "web"})]
    # frontend 3 is web's second frontend: summed per backend; frontend 9 is no longer programmed: left out
    assert got == [("dns", "fd00::1", 53, 1), ("web", "10.0.0.1", 80, 5), ("web", "10.0.0.2", 80, 1)]


def test_unavailable_parts_reach_stats_and_node_list(server):
    agent = Agent(MemoryMapWriter(), "n1")
    client = SyncClient(agent, [server.addr], stats_interval=0.1)
    part = Switch(flows)
    part.why = REFUSED
    client.reporter = StatsReporter({"counters": lambda: node_pb2.Counters(translations=4), "flows": part,
                                     "socket_stats": sockets})
    client.start()
    try:
        def node_stats():
            nodes = server.api.GetStats(api_pb2.GetStatsRequest()).nodes
            return nodes[0] if nodes else None

        wait_for(lambda: node_stats() is not None and node_stats().unavailable, "a report with a missing part")
        ns = node_stats()
        assert dict(ns.unavailable) == {"flows": REFUSED}
        assert ns.counters.translations == 4
        stats = server.api.GetStats(api_pb2.GetStatsRequest())
        assert [(s.service, [b.sockets[0].sockets for b in s.backends]) for s in stats.services] == [("web", [3])]
        text = cli.text_stats(stats)
        assert f"n1: flows unavailable: {REFUSED}" in text
        node_row = next(line for line in text.splitlines() if line.startswith("n1 "))
        assert node_row.split()[1:3] == ["?", "4"]  # flows not read, counters read

        wait_for(lambda: server.api.ListNodes(api_pb2.ListNodesRequest()).nodes[0].stats_unavailable,
                 "node record with the missing part")
        nodes = server.api.ListNodes(api_pb2.ListNodesRequest())
        assert dict(nodes.nodes[0].stats_unavailable) == {"flows": REFUSED}
        assert f"n1: statistics unavailable: flows ({REFUSED})" in cli.text_nodes(nodes)

        # The part comes back: the record says so, the numbers are there again.
        part.why = None
        wait_for(lambda: not server.api.ListNodes(api_pb2.ListNodesRequest()).nodes[0].stats_unavailable,
                 "node record without missing parts")
        wait_for(lambda: node_stats().active_flows == 3, "flows reported again")
        assert "unavailable" not in cli.text_stats(server.api.GetStats(api_pb2.GetStatsRequest()))
    finally:
        client.stop()


def test_node_list_shows_ways_and_refused_features():
    n = api_pb2.Node(name="n1", capabilities={
        "flows": "socket-iter", "sock_destroy": "kfunc", "socket_stats": "socket-iter",
        "map_elem_iter": "no: loading flows.o (socklb_flows_map) failed: Operation not permitted",
        "sock_destroy_kfunc": "yes"})
    text = cli.text_nodes(api_pb2.ListNodesResponse(nodes=[n]))
    assert "n1: flows=socket-iter  sock_destroy=kfunc  socket_stats=socket-iter" in text
    assert "n1: not available: map_elem_iter (loading flows.o (socklb_flows_map) failed: " \
           "Operation not permitted)" in text
    assert "sock_destroy_kfunc" not in text
