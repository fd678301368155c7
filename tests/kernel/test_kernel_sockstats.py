"""Socket statistics (socklb/dataplane/sockstats.py, bpf/sock_stats.bpf.c):
the load-balanced sockets of clients in the host and in a test network
namespace are found with the bytes they moved, their state, RTT and UDP
drops, summed per service and backend; direct connections to a backend
address are not counted.

Expected values come from what the test's clients did: each client reports
the bytes it sent and received on each socket and the backend that answered
it (the backends reply with their name), and its socket cookies; UDP drops
are the replies a client with a tiny receive buffer never got. Per socket,
state, RTT and retransmits are also compared with the kernel's TCP_INFO of
the same socket. A listener of the test's own serves a third service to put
sockets in CLOSE_WAIT and FIN_WAIT2.
"""

from __future__ import annotations

import os
import socket
import time

import pytest

import netenv
from netenv import backend, frontend, node_state, poll, service
from support import free_port

from socklb.lb import protocols

pytestmark = pytest.mark.agent

VIP = "127.96.0.70"
ADDR_A = "127.0.0.2"
ADDR_B = "127.0.0.3"
ADDR_C = "127.0.0.4"   # the backend of the "hold" service: a listener the test drives
MAX_TRIES = 200        # connections opened until both backends have enough (random 50/50)
SETTLE = 20.0          # bound on waiting for ACKs/replies to land (loopback: milliseconds)

# Client operations that account for every byte, added to client.py's.
EXTRA = r'''
import socket, sys
sys.path.insert(0, sys.argv.pop(1))
import client

def payload(nbytes, lines):
    """nbytes bytes in `lines` lines, the last one ending the payload."""
    each = nbytes // lines
    body = (b"x" * (each - 1) + b"\n") * (lines - 1)
    return body + b"x" * (nbytes - len(body) - 1) + b"\n"

def op_tcp_conn(self, id, addr, port, nbytes=0, lines=0):
    """Connect and keep the socket; send nbytes in `lines` request lines and
    read the `lines` replies. -> {peer, backend, sent, received}"""
    if id in self.socks:
        raise ValueError(f"socket id {id} in use")
    s, err = client.connect(addr, port)
    if err:
        return {"error": err}
    self.socks[id] = s
    out = {"peer": client.peer_str(s.getpeername()), "backend": None, "sent": 0, "received": 0}
    if nbytes:
        data = payload(nbytes, lines)
        s.sendall(data)
        buf = b""
        while buf.count(b"\n") < lines:
            chunk = s.recv(65536)
            if not chunk:
                return {"error": "ECONNRESET"}
            buf += chunk
        out.update(sent=len(data), received=len(buf), backend=buf.split(b"\n", 1)[0].decode())
    return out

def op_tcp_send(self, id, nbytes):
    self.socks[id].sendall(b"z" * nbytes)
    return {"sent": nbytes}

def op_shutdown_wr(self, id):
    self.socks[id].shutdown(socket.SHUT_WR)
    return {}

def op_udp_conn(self, id, addr, port, n=1):
    """A connected UDP socket kept open, n request/reply rounds."""
    if id in self.socks:
        raise ValueError(f"socket id {id} in use")
    s = socket.socket(client.family(addr), socket.SOCK_DGRAM)
    s.settimeout(client.IO_TIMEOUT)
    s.connect((addr, port))
    self.socks[id] = s
    names = set()
    for _ in range(n):
        s.send(b"ping")
        names.add(s.recv(65535).decode())
    return {"backend": names.pop() if len(names) == 1 else sorted(names),
            "peer": client.peer_str(s.getpeername())}

def op_udp_flood(self, id, n, rcvbuf):
    """Shrink the receive buffer, send n requests without reading."""
    s = self.socks[id]
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    for _ in range(n):
        s.send(b"ping")
    return {}

def op_udp_drain(self, id):
    """Read what is queued, without waiting: called once the backend has sent
    every reply, so what is not queued now was dropped."""
    s = self.socks[id]
    s.setblocking(False)
    got = 0
    try:
        while True:
            s.recv(65535)
            got += 1
    except BlockingIOError:
        pass
    s.settimeout(client.IO_TIMEOUT)
    return {"received": got}

def op_tcp_info(self):
    """The kernel's TCP_INFO of each TCP socket, keyed by cookie."""
    import struct
    out = {}
    for k, s in self.socks.items():
        if s.type != socket.SOCK_STREAM:
            continue
        info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 136)
        cookie = int.from_bytes(s.getsockopt(socket.SOL_SOCKET, client.SO_COOKIE, 8), sys.byteorder)
        out[str(cookie)] = {"state": info[0], "rtt": struct.unpack_from("=I", info, 68)[0],
                            "total_retrans": struct.unpack_from("=I", info, 100)[0],
                            "bytes_acked": struct.unpack_from("=Q", info, 120)[0],
                            "bytes_received": struct.unpack_from("=Q", info, 128)[0]}
    return out

client.main(globals())
'''


@pytest.fixture
def sclients(clients):
    """sclients(netns=None): client.py plus EXTRA, in the test cgroup; with a
    namespace, started with `ip netns exec` and moved into the cgroup before
    it makes any socket."""
    return lambda netns=None: clients(netns, extra=EXTRA, netns_exec=netns is not None)


def _sockstats():
    from socklb.dataplane import sockstats

    return sockstats


def names_of(agent) -> dict:
    """(frontend_id, backend_id) -> (service, address, port), from the agent."""
    fes = {f["id"]: f["service"] for f in agent.dump("services").get("frontends", [])}
    return {(b["frontendId"], b["id"]): (fes[b["frontendId"]], b["address"], b["port"])
            for b in agent.dump("backends").get("backends", [])}


class Expect:
    """Per (service, address, port, protocol): what the test's sockets did."""

    def __init__(self):
        self.rows: dict[tuple, dict] = {}
        self.cookies: set[int] = set()

    def add(self, key, state, sent=0, received=0, drops=0):
        r = self.rows.setdefault(key, {"sockets": 0, "states": {}, "bytes_sent": 0, "bytes_received": 0,
                                       "drops": 0})
        r["sockets"] += 1
        r["states"][state] = r["states"].get(state, 0) + 1
        r["bytes_sent"] += sent
        r["bytes_received"] += received
        r["drops"] += drops


def as_rows(stats) -> dict[tuple, dict]:
    from socklb.v1 import types_pb2

    out = {}
    for s in stats:
        key = (s.service, s.backend_address, s.backend_port, types_pb2.Protocol.Name(s.protocol))
        assert key not in out, key
        out[key] = {"sockets": s.sockets, "states": dict(s.states), "bytes_sent": s.bytes_sent,
                    "bytes_received": s.bytes_received, "drops": s.drops}
    return out


# --------------------------------------------------------------------------


def test_socket_stats_host_and_netns(agent, backends, sclients, netns):
    netenv.require_bpf_build_tools()
    ss = _sockstats()
    from socklb.v1 import types_pb2

    assert not netns.has_default_route()
    tA, tB = backends("A", ADDR_A), backends("B", ADDR_B)
    uA, uB = backends("A", ADDR_A, proto="udp"), backends("B", ADDR_B, proto="udp")
    ns_servers = {}
    for b in (tA, tB, uA, uB):  # the same servers inside the namespace
        ns_servers[(b.label, b.proto)] = backends(b.label, b.addr, b.port, b.proto, netns)
    udp_servers = {("host", "A"): uA, ("host", "B"): uB,
                   ("ns", "A"): ns_servers[("A", "udp")], ("ns", "B"): ns_servers[("B", "udp")]}
    # "hold": one backend that is a plain listener of the test's, to put
    # sockets in CLOSE_WAIT (the listener side closes) and FIN_WAIT2 (the
    # client shuts down writing, the listener side never closes).
    hold = socket.socket()
    hold.bind((ADDR_C, 0))
    hold.listen(16)
    hold.settimeout(netenv.RPC_TIMEOUT)
    accepted = []
    try:
        tport, uport, hport = free_port(VIP), free_port(VIP, socket.SOCK_DGRAM), free_port(VIP)
        a = agent(node_state(1,
                             service("web", [frontend(VIP, tport)], [backend(tA), backend(tB)]),
                             service("dns", [frontend(VIP, uport, "udp")], [backend(uA), backend(uB)]),
                             service("hold", [frontend(VIP, hport)], [backend((ADDR_C, hold.getsockname()[1]))])))
        names = names_of(a)
        port_of = {("A", "TCP"): tA.port, ("B", "TCP"): tB.port, ("A", "UDP"): uA.port, ("B", "UDP"): uB.port}
        addr_of = {"A": ADDR_A, "B": ADDR_B}
        host, inns = sclients(), sclients(netns)
        assert inns.hello["netns"] != host.hello["netns"]
        exp = Expect()
        lb_ids = {"host": set(), "ns": set()}   # ids of the sockets that must be counted
        floods = []                             # (client name, client, socket id, backend)
        sizes = [(1000, 10), (5000, 40)]        # (bytes, request lines) per connection, in turn

        for name, c in (("host", host), ("ns", inns)):
            per = {"A": 0, "B": 0}
            for i in range(MAX_TRIES):
                if min(per.values()) >= 2:
                    break
                nbytes, lines = sizes[i % len(sizes)]
                r = c.call("tcp_conn", id=f"t{i}", addr=VIP, port=tport, nbytes=nbytes, lines=lines)
                assert "error" not in r and r["peer"] == [VIP, tport], r
                assert r["sent"] == nbytes, r
                b = r["backend"]
                per[b] += 1
                exp.add(("web", addr_of[b], port_of[(b, "TCP")], "PROTOCOL_TCP"), "ESTABLISHED",
                        sent=r["sent"], received=r["received"])
                lb_ids[name].add(f"t{i}")
            assert min(per.values()) >= 2, per
            # an IPv6 socket to the IPv4 VIP (v4-mapped): counted too
            mapped = "::ffff:" + VIP
            r = c.call("tcp_conn", id="v4mapped", addr=mapped, port=tport, nbytes=2500, lines=25)
            assert "error" not in r and r["peer"] == [mapped, tport], r
            exp.add(("web", addr_of[r["backend"]], port_of[(r["backend"], "TCP")], "PROTOCOL_TCP"),
                    "ESTABLISHED", sent=r["sent"], received=r["received"])
            lb_ids[name].add("v4mapped")
            # two connected UDP sockets: one plain, one whose replies overflow its buffer
            for j in range(2):
                r = c.call("udp_conn", id=f"u{j}", addr=VIP, port=uport, n=3)
                assert r["peer"] == [VIP, uport] and r["backend"] in ("A", "B"), r
                lb_ids[name].add(f"u{j}")
                b = r["backend"]
                if j == 1:
                    floods.append((name, c, f"u{j}", b))
                else:
                    exp.add(("dns", addr_of[b], port_of[(b, "UDP")], "PROTOCOL_UDP"), "CONNECTED")
            # direct connections to backend A's own address: not load-balanced, not counted
            r = c.call("tcp_conn", id="direct-tcp", addr=ADDR_A, port=tA.port, nbytes=700, lines=7)
            assert r["backend"] == "A" and r["peer"] == [ADDR_A, tA.port], r
            r = c.call("udp_conn", id="direct-udp", addr=ADDR_A, port=uA.port)
            assert r["backend"] == "A", r

        # UDP drops: with a small receive buffer, replies to n requests overflow it.
        n_flood = 64
        for name, c, i, b in floods:
            srv = udp_servers[(name, b)]
            before = srv.replied
            c.call("udp_flood", id=i, n=n_flood, rcvbuf=1024)
            # every reply sent (the event the drop count depends on), not a silence
            assert poll(lambda: srv.replied >= before + n_flood, timeout=SETTLE), (srv.replied, before)
            got = c.call("udp_drain", id=i)["received"]
            # 3 replies were read when the socket was opened; the backend answered every request
            assert got < n_flood, "the small receive buffer should have overflowed"
            exp.add(("dns", addr_of[b], port_of[(b, "UDP")], "PROTOCOL_UDP"), "CONNECTED",
                    drops=n_flood - got)

        # host: one socket in CLOSE_WAIT and one in FIN_WAIT2 (service "hold")
        hkey = ("hold", ADDR_C, hold.getsockname()[1], "PROTOCOL_TCP")
        r = host.call("tcp_conn", id="cw", addr=VIP, port=hport)
        assert "error" not in r and r["peer"] == [VIP, hport], r
        conn, _ = hold.accept()
        accepted.append(conn)
        conn.sendall(b"y" * 321)
        conn.close()                     # the client sees data + FIN: CLOSE_WAIT
        cw_received = 321
        r = host.call("tcp_conn", id="fw", addr=VIP, port=hport)
        assert "error" not in r, r
        conn, _ = hold.accept()
        accepted.append(conn)
        fw_sent = 123
        # the client writes, then shuts down writing: FIN_WAIT2 once its FIN is acked
        assert host.call("tcp_send", id="fw", nbytes=fw_sent) == {"sent": fw_sent}
        assert host.call("shutdown_wr", id="fw") == {}
        exp.add(hkey, "CLOSE_WAIT", received=cw_received)
        exp.add(hkey, "FIN_WAIT2", sent=fw_sent)
        lb_ids["host"] |= {"cw", "fw"}

        want_cookies = set()
        for name, c in (("host", host), ("ns", inns)):
            ck = c.call("cookies")
            want_cookies |= {ck[i] for i in lb_ids[name]}
        ns_cookies = {v for k, v in inns.call("cookies").items() if k in lb_ids["ns"]}
        want_t0 = host.call("cookies")["t0"]

        with ss.SocketStatsCollector(a.pin_dir) as col:
            def look():
                rep = col.collect_report()
                return rep, as_rows(ss.aggregate(rep.samples, names))

            # ACKs and drops land within microseconds on loopback; bounded wait anyway
            rep, rows = look()
            deadline = time.monotonic() + SETTLE
            while rows != exp.rows and time.monotonic() < deadline:
                time.sleep(0.05)
                rep, rows = look()
            print(f"\nload {col.load_seconds * 1000:.0f} ms; collect: {rep.summary()}")
            for k in sorted(rows):
                print("  ", k, rows[k])
            assert rep.errors == [], rep.errors
            assert {s.cookie for s in rep.samples} == want_cookies, "exactly the load-balanced sockets"
            assert {s.cookie for s in rep.samples if s.netns == inns.hello["netns"]} == ns_cookies
            ck6 = {host.call("cookies")["v4mapped"], inns.call("cookies")["v4mapped"]}
            assert {s.cookie for s in rep.samples if s.family == socket.AF_INET6} == ck6
            assert rows == exp.rows, (rows, exp.rows, sorted(rep.samples, key=lambda s: s.cookie),
                                      {n: c.call("cookies") for n, c in (("host", host), ("ns", inns))})
            stats = ss.aggregate(rep.samples, names)
            for s in stats:
                if s.protocol == types_pb2.PROTOCOL_TCP:
                    assert s.srtt_us > 0, s
                else:
                    assert s.srtt_us == 0 and s.bytes_sent == 0 and s.bytes_received == 0, s
            # per socket, against the kernel's own TCP_INFO of the same (idle) socket
            info = {}
            for _, c in (("host", host), ("ns", inns)):
                info.update({int(k): v for k, v in c.call("tcp_info").items()})
            tcp = [s for s in rep.samples if s.protocol == "tcp"]
            assert tcp and all(s.cookie in info for s in tcp)
            for s in tcp:
                i = info[s.cookie]
                assert (s.state, s.srtt_us, s.retransmits) == (i["state"], i["rtt"], i["total_retrans"]), (s, i)
                assert s.srtt_us > 0, s
                # tcp_info counts sequence space: the SYN, and a FIN once acked / received
                fin_acked, fin_received = s.state_name == "FIN_WAIT2", s.state_name == "CLOSE_WAIT"
                assert s.bytes_sent == i["bytes_acked"] - 1 - fin_acked, (s, i)
                assert s.bytes_received == i["bytes_received"] - fin_received, (s, i)
            assert [(s.service, s.backend_address, s.backend_port, s.protocol) for s in stats] == sorted(
                (s.service, s.backend_address, s.backend_port, s.protocol) for s in stats)
            # a closed socket leaves the sums (once the kernel lets it go: an
            # orphan still closing is a socket like the others)
            host.call("close", id="t0")
            before = {s.cookie for s in rep.samples}
            gone = poll(lambda: before - {s.cookie for s in col.collect()}, timeout=SETTLE)
            assert gone == {want_t0}, gone
    finally:
        for c in accepted:
            c.close()
        hold.close()


def test_timings(agent, backends, sclients):
    """Not an assertion on time (tests record timings, never assert them): prints how long one
    collection took with N load-balanced connections open, for the record."""
    netenv.require_bpf_build_tools()
    ss = _sockstats()
    n = int(os.environ.get("SOCKLB_SOCKSTATS_N", "2000"))
    a, vport = netenv.web_on_two_backends(agent, backends, VIP)
    names = names_of(a)
    c = sclients()
    r = c.call("tcp_open_many", prefix="m", addr=VIP, port=vport, n=n, timeout=300)
    assert r["opened"] == n, r
    with ss.SocketStatsCollector(a.pin_dir) as col:
        times, agg = [], []
        for _ in range(5):
            rep = col.collect_report()
            t0 = time.perf_counter()
            stats = ss.aggregate(rep.samples, names)
            agg.append(time.perf_counter() - t0)
            times.append(rep.duration)
            assert sum(s.sockets for s in stats) == n, rep.summary()
        times.sort()
        print(f"\n{n} sockets, {rep.netns_scanned} netns: collect median {times[2] * 1000:.1f} ms "
              f"(min {times[0] * 1000:.1f}, max {times[-1] * 1000:.1f}); aggregate median "
              f"{sorted(agg)[2] * 1000:.1f} ms; load {col.load_seconds * 1000:.0f} ms")
    c.call("close_many", prefix="m")


# --------------------------------------------------------------------------
# no privileges needed


@pytest.mark.pure
def test_aggregate():
    ss = _sockstats()
    from socklb.v1 import types_pb2

    S = ss.SocketSample
    samples = [
        S("net:[1]", 1, 5, 50, "tcp", socket.AF_INET, 1, 100, 10, 40, 1, 0),
        S("net:[1]", 2, 5, 50, "tcp", socket.AF_INET, 8, 200, 20, 0, 0, 0),   # no RTT sample
        S("net:[2]", 3, 5, 50, "tcp", socket.AF_INET6, 1, 300, 30, 61, 2, 0),
        S("net:[1]", 4, 5, 51, "tcp", socket.AF_INET, 2, 0, 0, 0, 0, 0),
        S("net:[1]", 5, 6, 60, "udp", socket.AF_INET, 1, 0, 0, 0, 0, 7),
        S("net:[1]", 6, 6, 60, "udp", socket.AF_INET, 7, 0, 0, 0, 0, 1),
        S("net:[1]", 7, 9, 90, "tcp", socket.AF_INET, 1, 1, 1, 1, 0, 0),     # not named
    ]
    names = {(5, 50): ("web", "10.0.0.1", 80), (5, 51): ("web", "10.0.0.2", 80),
             (6, 60): ("dns", "10.0.0.1", 53)}
    skipped = []
    out = ss.aggregate(samples, names, skipped=skipped)
    assert [s.cookie for s in skipped] == [7]
    assert [(s.service, s.backend_address, s.backend_port, s.protocol) for s in out] == [
        ("dns", "10.0.0.1", 53, types_pb2.PROTOCOL_UDP),
        ("web", "10.0.0.1", 80, types_pb2.PROTOCOL_TCP),
        ("web", "10.0.0.2", 80, types_pb2.PROTOCOL_TCP),
    ]
    dns, web1, web2 = out
    assert dns.sockets == 2 and dict(dns.states) == {"CONNECTED": 1, "7": 1} and dns.drops == 8
    assert dns.srtt_us == 0 and dns.bytes_sent == 0
    assert web1.sockets == 3 and dict(web1.states) == {"ESTABLISHED": 2, "CLOSE_WAIT": 1}
    assert (web1.bytes_sent, web1.bytes_received, web1.retransmits) == (600, 60, 3)
    assert web1.srtt_us == 51  # mean of 40 and 61 (the socket without a sample left out), rounded
    assert dict(web2.states) == {"SYN_SENT": 1} and web2.srtt_us == 0
    assert ss.aggregate([], names) == []
    assert protocols.state_name("tcp", 99) == "99" and protocols.state_name("udp", 1) == "CONNECTED"


@pytest.mark.pure
def test_parse_records():
    ss = _sockstats()
    import struct

    rec = struct.pack("=QQQIIIIIHBB", 77, 1000, 20, 3, 4, 55, 1, 0, socket.AF_INET, socket.IPPROTO_TCP, 1)
    got = ss.parse(rec * 2 + b"\0" * 5, "net:[9]")  # a stray tail is ignored
    assert len(got) == 2 and got[0] == ss.SocketSample("net:[9]", 77, 3, 4, "tcp", socket.AF_INET, 1,
                                                       1000, 20, 55, 1, 0)
    assert got[0].state_name == "ESTABLISHED"


@pytest.mark.pure
def test_collector_needs_the_agent_maps(tmp_path):
    ss = _sockstats()
    with pytest.raises(ss.SocketStatsError, match="does not exist"):
        ss.SocketStatsCollector(tmp_path / "nowhere")
