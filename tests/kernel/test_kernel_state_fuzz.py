"""Node-state fuzzing against a real agent: generated desired states (as
documents through the state-file parser, and as messages) are applied to an
agent that balances a live connection. Whatever is generated, a refused
state leaves the programmed maps exactly as they were, an accepted one leaves
the untouched service alone, the live connection keeps working, and the
agent never dies.

SOCKLB_FUZZ_EXAMPLES scales the cases (default 250 -> 62 here: each case is
a few admin calls; `make fuzz` runs more)."""

from __future__ import annotations

import json
import os

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from figures import record
from netenv import backend, frontend, node_state, service
from support import free_port

pytestmark = pytest.mark.agent

VIP = "127.96.0.80"
EXAMPLES = max(10, int(os.environ.get("SOCKLB_FUZZ_EXAMPLES", "250")) // 4)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

addresses = st.one_of(st.sampled_from(["127.0.0.2", "127.0.0.9", "127.96.0.81", "127.96.0.80", "::1", "[::1]",
                                       "fd00::5", "", "300.0.0.1", "fe80::1%a", "[10.0.0.1]", "0.0.0.0"]),
                      st.text(max_size=10))
ports = st.one_of(st.integers(0, 70000), st.sampled_from([0, 1, 80, 65535, 65536]))
protocols = st.sampled_from(["PROTOCOL_TCP", "PROTOCOL_UDP", "PROTOCOL_UNSPECIFIED", 7])
selections = st.sampled_from(["SELECTION_RANDOM", "SELECTION_MAGLEV", "SELECTION_UNSPECIFIED", 9])
states = st.sampled_from(["BACKEND_STATE_ACTIVE", "BACKEND_STATE_DRAINING", "BACKEND_STATE_QUARANTINED", 9])
frontends = st.fixed_dictionaries({"address": addresses, "port": ports}, optional={"protocol": protocols})
backends = st.fixed_dictionaries({"address": addresses}, optional={
    "port": ports, "weight": st.one_of(st.integers(0, 3), st.integers(0, 70000)), "state": states})
services = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["extra", "other", "web", "", "x\n", "a" * 300]), st.text(max_size=8))},
    optional={"frontends": st.lists(frontends, max_size=3), "backends": st.lists(backends, max_size=4),
              "selection": selections, "affinity_timeout_seconds": st.integers(0, 700000),
              "keep_flows": st.lists(backends, max_size=2)})
scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.text(max_size=6), st.floats(allow_nan=True))
structured = st.lists(services, max_size=3).map(lambda extra: {"services": extra})
documents = st.one_of(
    structured, structured, structured,                                    # mostly typed right
    st.text(max_size=80),                                                  # anything at all
    st.fixed_dictionaries({}, optional={"version": scalars, "services": scalars, "extra": scalars}),
)


def test_generated_states_never_break_the_node_or_its_connection(agent, backends, clients):
    from socklb.lb.errors import InvalidState
    from socklb.dataplane.statefile import parse_state
    from socklb.v1 import node_pb2, node_pb2_grpc

    b = backends("backend", "127.0.0.2")
    vport = free_port(VIP)
    web = service("web", [frontend(VIP, vport)], [backend(b)])
    a = agent(node_state(1, web))
    c = clients()
    assert c.call("tcp_open", id="live", addr=VIP, port=vport)["backend"] == "backend"
    stub = node_pb2_grpc.NodeAdminStub(grpc.insecure_channel(f"unix://{a.socket}"))
    req = node_pb2.DumpRequest()

    def maps():
        return (stub.DumpServices(req, timeout=30), stub.DumpBackends(req, timeout=30))

    def web_of(dump):
        fe = [f for f in dump[0].frontends if f.service == "web"]
        return [(f.frontend.address, f.frontend.port, list(f.slots)) for f in fe]

    baseline_web = web_of(maps())
    outcome = {"parse-refused": 0, "refused": 0, "applied": 0}
    version = [1]

    @FUZZ
    @given(documents)
    def one(doc):
        # Every structured document keeps "web" as it is (one more service may sit beside it).
        if isinstance(doc, dict) and isinstance(doc.get("services"), list):
            doc["services"] = [s for s in doc["services"] if s.get("name") != "web"] + [web]
        text = doc if isinstance(doc, str) else json.dumps(doc)
        before = maps()
        try:
            state = parse_state(text, "fuzz")
        except InvalidState:
            outcome["parse-refused"] += 1
            assert maps() == before
            return
        version[0] += 1
        state.version = version[0]
        try:
            stub.ApplyState(node_pb2.ApplyStateRequest(full=state), timeout=60)
            outcome["applied"] += 1
            assert web_of(maps()) == baseline_web or not any(s.name == "web" for s in state.services)
        except grpc.RpcError as e:
            assert e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION), \
                (e.code(), e.details(), text)
            outcome["refused"] += 1
            assert maps() == before, text
        r = c.call("tcp_ping", id="live")
        assert r.get("error") is None and r["backend"] == "backend", (r, text)

    try:
        one()
        # Put the baseline back if an accepted document dropped "web" (a bare `services: []` text).
        assert a.running(), a.log_text()
        assert "Traceback" not in a.log_text(), a.log_text()
        assert min(outcome.values()) > 0, outcome  # every path was taken
        record("node-state fuzz: generated states applied to a real agent balancing a live connection",
               sum(outcome.values()), "refused states left the maps unchanged; the live connection answered "
               "after every case; the agent never died", **{k.replace("-", "_"): v for k, v in outcome.items()})
    finally:
        print("state fuzz outcomes:", outcome)
