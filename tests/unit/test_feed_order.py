"""A node's version R means "every change up to revision R", under writes of
every kind interleaved as fast as the store takes them: a real control plane
(grpc.aio, embedded store) and a raw node stream, each update it receives
checked against the full compute (compute.node_state) of what the store held
at that revision, replayed from the writes the test made."""
import random
import threading

from socklb.controlplane import compute, keys
from socklb.controlplane.server import FEEDS
from socklb.v1 import api_pb2, node_pb2, types_pb2

from test_policy_compute import ALLOW, DENY, UDP, policy, redirect, rule, service, workload
from test_policy_sync import connect

NODE = "n1"
STEPS = 30  # writes per writer


class Recorder:
    """Writes to the store, remembering each change with its revision."""

    def __init__(self, store):
        self.store = store
        self.lock = threading.Lock()
        self.changes: list[tuple[int, str, bytes | None]] = []

    def txn(self, puts=(), deletes=()) -> int:
        # A delete of an absent key changes nothing and returns the current
        # revision: replayed, it removes nothing either (a key has one writer).
        data = [(key, msg.SerializeToString()) for key, msg in puts]
        rev = self.store.txn([], puts=data, deletes=list(deletes))
        with self.lock:
            self.changes += [(rev, key, value) for key, value in data] + [(rev, key, None) for key in deletes]
        return rev

    def held_at(self, revision: int) -> dict[str, tuple[bytes, int]]:
        """key -> (value, the revision that wrote it), as the store held it at `revision`."""
        held: dict[str, tuple[bytes, int]] = {}
        for rev, key, value in sorted(self.changes, key=lambda c: c[0]):
            if rev > revision:
                break
            if value is None:
                held.pop(key, None)
            else:
                held[key] = (value, rev)
        return held


def expected(held: dict[str, tuple[bytes, int]], version: int) -> node_pb2.NodeState:
    """The node's whole state computed from scratch from what the store held."""
    by_kind: dict[str, list] = {kind: [] for kind in FEEDS}
    for key, (value, rev) in held.items():
        kind = next(kind for kind, (prefix, _) in FEEDS.items() if key.startswith(prefix))
        resource = FEEDS[kind][1].FromString(value)
        resource.resource_version = rev
        by_kind[kind].append(resource)
    return compute.node_state(by_kind.pop("services"), NODE, version, **by_kind)


# --- the writers: one per kind, and one writing two kinds in one txn ----------------------------

LABELS = [{"app": "client"}, {"app": "node-dns"}, {"app": "db"}]


def a_service(name: str, i: int, rng: random.Random) -> api_pb2.Service:
    if name != "web":
        return service(name, (f"127.96.0.{i % 5 + 1}", 53, UDP))
    svc = service(name, ("127.96.0.20", 80, types_pb2.PROTOCOL_TCP))  # LOCAL: computed per node
    svc.traffic_policy = api_pb2.TRAFFIC_POLICY_LOCAL
    svc.backends.extend(types_pb2.Backend(address=f"10.0.2.{b}", port=80, node=rng.choice(["n1", "n2"]))
                        for b in range(rng.randint(1, 3)))
    return svc


def a_workload(name: str, i: int, rng: random.Random):
    return workload(name, rng.choice([NODE, NODE, "n2"]), rng.choice(LABELS), [f"10.0.1.{i}"])


def a_policy(name: str, i: int, rng: random.Random):
    return policy(name, rng.choice(LABELS),
                  rule(rng.choice([ALLOW, DENY]), services=[rng.choice(["dns", "web", "db"])]),
                  rule(DENY, cidrs=[rng.choice(["10.0.0.0/8", "10.1.0.0/16"])]))


def a_redirect(name: str, i: int, rng: random.Random):
    return redirect(name, rng.choice(LABELS), service_name=rng.choice(["dns", "web"]))


def writer(key, names: list[str], make):
    """Writes of one kind: puts of make(name, step, rng), one in five a delete."""
    def write(rec: Recorder, rng: random.Random) -> None:
        for i in range(STEPS):
            name = rng.choice(names)
            if rng.random() < 0.2:
                rec.txn(deletes=[key(name)])
            else:
                rec.txn([(key(name), make(name, i, rng))])
    return write


def write_two_kinds_at_once(rec: Recorder, rng: random.Random) -> None:
    for i in range(STEPS):
        rec.txn([(keys.service("both"), service("both", (f"127.96.1.{i % 7 + 1}", 80, types_pb2.PROTOCOL_TCP))),
                 (keys.workload("both"), workload("both", NODE, rng.choice(LABELS), [f"10.0.3.{i}"]))])


WRITERS = [writer(keys.service, ["dns", "web", "db"], a_service),
           writer(keys.workload, ["w0", "w1", "w2", "w3"], a_workload),
           writer(keys.policy, ["p0", "p1"], a_policy), writer(keys.redirect, ["r0", "r1"], a_redirect),
           write_two_kinds_at_once]


def test_every_update_a_node_receives_is_the_state_at_its_version(server):
    rec = Recorder(server.store)
    node = connect(server, NODE)
    try:
        kind, _ = node.update()
        assert kind == "snapshot"
        assert node.state == expected(rec.held_at(node.state.version), node.state.version)
        threads = [threading.Thread(target=w, args=(rec, random.Random(i))) for i, w in enumerate(WRITERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # A last write every node gets: once it arrived, everything before it did.
        end = rec.txn([(keys.service("zz-end"), service("zz-end", ("127.96.9.9", 80, types_pb2.PROTOCOL_TCP)))])
        versions = [node.state.version]
        while node.state.version < end:
            kind, d = node.update()  # checks from_version == the version the node holds
            assert kind == "delta"
            assert d.from_version < d.version, f"delta from {d.from_version} to {d.version}"
            assert d.version > versions[-1]
            versions.append(d.version)
            assert node.state == expected(rec.held_at(d.version), d.version), f"the state at {d.version}"
        assert node.state.version == end
        # Not one update per write (a watch batch may hold several revisions), but
        # several, each checked above.
        assert len(versions) >= 5, versions
    finally:
        node.close()
