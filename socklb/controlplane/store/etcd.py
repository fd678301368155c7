"""The etcd store: the cluster store shared by several control-plane replicas.

Talks etcd's v3 gRPC API through the bindings shipped by ``etcd-sdk-python``
(``pyetcd.etcdrpc``) on channels it manages itself. (pyetcd's high-level client
is not used: it marks a failed endpoint unusable for 300 s, which would keep a
single-endpoint store down for 5 minutes after an etcd restart, and its
``transaction()`` drops the response header, i.e. the txn's revision.)

- Endpoints: several ``host:port``; requests go to the current one; on a
  connection error the store moves to the next. Reads (get, range, revision)
  try every endpoint before raising Unavailable; a txn is sent once (its
  outcome is unknown after a connection error), to the first endpoint whose
  last call did not fail. Channels reconnect by themselves (backoff
  capped at 1 s), so the same Store object works again after etcd comes back.
- txn: an etcd Txn; ``Compare(key, 0)`` becomes ``create_revision == 0`` (must
  not exist), others ``mod_revision == n``.
- range: paginated at a pinned revision (consistent snapshot of any size).
- watch: one gRPC stream per watch; etcd's start_revision is inclusive. The
  stream reconnects after connection loss and resumes after the last delivered
  revision; if that revision was compacted meanwhile, the watch fails with
  Compacted (see base.py for how errors are delivered). ``watch()`` itself
  raises Compacted (checked with a range at the start revision) or Unavailable.
- campaign: a lease (TTL rounded up to whole seconds, kept alive every TTL/3
  by the campaign's thread) and the leader key ``/socklb/leader/<name>``
  created by a txn only if absent. ``fence()`` compares the leader key's
  revision as created by this campaign: an etcd lease/lock alone is not mutual
  exclusion (a paused leader may still write after its lease expired), the
  fenced txn is.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from typing import Callable, Sequence

import grpc
from pyetcd import etcdrpc as rpc

from socklb.grpcauth import channel_credentials
from socklb.lb.addresses import join_host_port, split_host_port

from .. import keys
from .base import (Compacted, Compare, Event, Full, KeyValue, Leadership, Store, StoreError, Unavailable, WatchBase,
                   check_key, check_txn, describe_range, key_range, never_holds)

log = logging.getLogger(__name__)

_CONN_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_GRPC_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # etcd's default keepalive enforcement allows pings every 5 s while a stream is open
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.max_receive_message_length", 64 << 20),
]


def _is_conn_error(e: grpc.RpcError) -> bool:
    return e.code() in _CONN_CODES


def _map_error(e: grpc.RpcError, what: str) -> StoreError:
    code, details = e.code(), e.details()
    if code in _CONN_CODES:
        return Unavailable(f"etcd {what}: {code.name}: {details}")
    if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in (details or ""):
        return Compacted(0, f"etcd {what}: {details}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "space" in (details or ""):
        return Full(f"etcd {what}: {details}")  # mvcc: database space exceeded (NOSPACE alarm)
    return StoreError(f"etcd {what}: {code.name}: {details}")


def _etcd_range(start: bytes, end: bytes | None) -> tuple[bytes, bytes]:
    """etcd's (key, range_end) for the bytes [start, end) of base.key_range:
    etcd reads key "\\0" as the first key, range_end "\\0" as "to the last"."""
    return start or b"\0", end or b"\0"


def parse_etcd_endpoints(hosts: str, url: str) -> list[tuple[str, int]]:
    """The endpoints of an etcd store URL (`host:port,...`; port 2379 by
    default, IPv6 as `[addr]:port`); ValueError naming `url`."""
    eps = []
    for part in hosts.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"store URL {url!r}: empty endpoint")
        try:
            host, port_s = split_host_port(part)
        except ValueError as e:
            raise ValueError(f"store URL {url!r}: bad endpoint {part!r}: {e}") from None
        try:
            port = 2379 if port_s is None else int(port_s)
        except ValueError:
            raise ValueError(f"store URL {url!r}: bad port in {part!r}") from None
        if not host or not 0 < port < 65536:
            raise ValueError(f"store URL {url!r}: bad endpoint {part!r}")
        eps.append((host, port))
    return eps


def tls_credentials(ca: str, cert: str, key: str) -> grpc.ChannelCredentials | None:
    """Client TLS to etcd (--client-cert-auth: with cert and key) from PEM
    files, read once: a new client certificate takes a control-plane restart."""
    if not (ca or cert or key):
        return None
    if bool(cert) != bool(key):
        raise ValueError("etcd store: `cert` and `key` go together")
    if not ca:
        raise ValueError("etcd store: TLS needs `ca` (the CA that signed etcd's certificate)")
    try:
        return channel_credentials(ca, cert or None, key or None)
    except OSError as e:
        raise ValueError(f"etcd store: cannot read {e.filename}: {e.strerror}") from None


class _Endpoint:
    def __init__(self, host: str, port: int, credentials: grpc.ChannelCredentials | None = None):
        self.netloc = join_host_port(host, port)
        self.channel = (grpc.secure_channel(self.netloc, credentials, options=_GRPC_OPTIONS) if credentials
                        else grpc.insecure_channel(self.netloc, options=_GRPC_OPTIONS))
        self.kv = rpc.KVStub(self.channel)
        self.lease = rpc.LeaseStub(self.channel)
        self.watch = rpc.WatchStub(self.channel)
        self.failed = False  # the last call here met a connection error

    def close(self) -> None:
        self.channel.close()


class EtcdStore(Store):
    def __init__(self, endpoints: Sequence[tuple[str, int]], timeout: float = 5.0, page_size: int = 1000,
                 ca: str = "", cert: str = "", key: str = ""):
        if not endpoints:
            raise ValueError("etcd store: no endpoints")
        if timeout <= 0:
            raise ValueError(f"etcd store: timeout must be > 0, got {timeout}")
        self.timeout = timeout
        self.page_size = page_size
        creds = tls_credentials(ca, cert, key)
        self.tls = creds is not None
        self._eps = [_Endpoint(h, p, creds) for h, p in endpoints]
        self._cur = 0
        self._mu = threading.Lock()
        self._closed = False
        self._watches: set[_EtcdWatch] = set()
        self._leaders: set[_EtcdLeadership] = set()

    def __repr__(self) -> str:
        return f"EtcdStore({','.join(e.netloc for e in self._eps)}{', tls' if self.tls else ''})"

    # --- endpoints and calls ------------------------------------------------

    def _order(self) -> list[_Endpoint]:
        with self._mu:
            n = len(self._eps)
            order = [self._eps[(self._cur + i) % n] for i in range(n)]
        return [e for e in order if not e.failed] + [e for e in order if e.failed]

    def _used(self, ep: _Endpoint, ok: bool) -> None:
        with self._mu:
            ep.failed = not ok
            i = self._eps.index(ep)
            if ok:
                self._cur = i
            elif self._cur == i:
                self._cur = (i + 1) % len(self._eps)

    def _call(self, what: str, fn: Callable[[_Endpoint], object], retry: bool = True):
        """Run fn on the current endpoint; on a connection error move on to the
        next endpoint (all of them if retry, else none)."""
        if self._closed:
            raise StoreError("etcd store is closed")
        last: grpc.RpcError | None = None
        eps = self._order()
        for ep in (eps if retry else eps[:1]):
            try:
                out = fn(ep)
            except ValueError as e:  # grpc: "Cannot invoke RPC on closed channel!"
                if self._closed:
                    raise StoreError("etcd store is closed") from e
                raise
            except grpc.RpcError as e:
                if self._closed:
                    raise StoreError("etcd store is closed") from e
                if not _is_conn_error(e):
                    raise _map_error(e, what) from e
                self._used(ep, False)
                last = e
                continue
            self._used(ep, True)
            return out
        assert last is not None
        tried = ", ".join(e.netloc for e in (eps if retry else eps[:1]))
        raise Unavailable(f"etcd {what} ({tried}): {last.code().name}: {last.details()}") from last

    def _range(self, req: rpc.RangeRequest, what: str) -> rpc.RangeResponse:
        return self._call(what, lambda ep: ep.kv.Range(req, timeout=self.timeout))

    # --- reads --------------------------------------------------------------

    def revision(self) -> int:
        return self._range(rpc.RangeRequest(key=b"\0", count_only=True), "revision").header.revision

    def _raw_get(self, key: str):
        resp = self._range(rpc.RangeRequest(key=check_key(key)), "get")
        return resp.kvs[0] if resp.kvs else None

    def get(self, key: str) -> KeyValue | None:
        kv = self._raw_get(key)
        return _kv(kv) if kv is not None else None

    def range(self, prefix: str, end: str | None = None) -> tuple[list[KeyValue], int]:
        key, range_end = _etcd_range(*key_range(prefix, end))
        for _ in range(5):  # restart if the pinned revision is compacted mid-way
            out: list[KeyValue] = []
            rev = 0
            start = key
            try:
                while True:
                    resp = self._range(rpc.RangeRequest(key=start, range_end=range_end, limit=self.page_size,
                                                        revision=rev), "range")
                    rev = rev or resp.header.revision
                    out.extend(_kv(kv) for kv in resp.kvs)
                    if not resp.more or not resp.kvs:
                        return out, rev
                    start = resp.kvs[-1].key + b"\0"
            except Compacted:
                continue
        raise StoreError(f"etcd range {describe_range(prefix, end)}: compacted under every attempt")

    # --- the write ----------------------------------------------------------

    def txn(self, compares: Sequence[Compare], puts: Sequence[tuple[str, bytes]] = (),
            deletes: Sequence[str] = ()) -> int | None:
        cs, ps, ds = check_txn(compares, puts, deletes)
        return self._txn(cs, [(k, v, 0) for k, v in ps], ds)

    def _txn(self, cs: list[Compare], ps: list[tuple[str, bytes, int]], ds: list[str]) -> int | None:
        req = rpc.TxnRequest(
            compare=[_compare(c) for c in cs],
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=k.encode(), value=v, lease=lease))
                     for k, v, lease in ps]
            + [rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k.encode())) for k in ds])
        resp = self._call("txn", lambda ep: ep.kv.Txn(req, timeout=self.timeout), retry=False)
        return resp.header.revision if resp.succeeded else None

    def compact(self, revision: int) -> None:
        req = rpc.CompactionRequest(revision=revision, physical=True)
        try:
            self._call("compact", lambda ep: ep.kv.Compact(req, timeout=self.timeout))
        except Compacted:
            return  # already compacted at least that far
        except StoreError as e:
            if "future revision" in str(e):
                raise ValueError(f"cannot compact to {revision}: {e}") from None
            raise

    # --- watch --------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int, callback: Callable[[list[Event]], None],
              end: str | None = None) -> "_EtcdWatch":
        w = _EtcdWatch(self, prefix, start_revision, callback, end)  # checks the arguments first
        if self._closed:
            raise StoreError("etcd store is closed")
        with self._mu:
            self._watches.add(w)
        try:
            w._start_sync()
        except BaseException:
            w.cancel()
            raise
        return w

    def _forget_watch(self, w: "_EtcdWatch") -> None:
        with self._mu:
            self._watches.discard(w)

    # --- leases and leadership ---------------------------------------------

    def _grant(self, ttl: int) -> tuple[int, int]:
        resp = self._call("lease grant", lambda ep: ep.lease.LeaseGrant(rpc.LeaseGrantRequest(TTL=ttl),
                                                                         timeout=self.timeout))
        if resp.error:
            raise StoreError(f"etcd lease grant: {resp.error}")
        return resp.ID, resp.TTL

    def _keepalive(self, lease_id: int) -> int:
        """One keepalive; the lease's new TTL, <= 0 if the lease is gone."""
        def once(ep: _Endpoint) -> int:
            for resp in ep.lease.LeaseKeepAlive(iter([rpc.LeaseKeepAliveRequest(ID=lease_id)]),
                                                timeout=self.timeout):
                return resp.TTL
            return 0
        return self._call("lease keepalive", once)

    def _revoke(self, lease_id: int) -> None:
        try:
            self._call("lease revoke", lambda ep: ep.lease.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease_id),
                                                                        timeout=self.timeout))
        except StoreError as e:  # gone already, or etcd down: it expires by itself
            log.debug("lease %x revoke: %s", lease_id, e)

    def campaign(self, name: str, identity: str, ttl: float) -> "_EtcdLeadership":
        if self._closed:
            raise StoreError("etcd store is closed")
        if not ttl > 0:
            raise ValueError(f"ttl must be > 0, got {ttl!r}")
        ld = _EtcdLeadership(self, name, identity, ttl)
        with self._mu:
            self._leaders.add(ld)
        ld._thread.start()
        return ld

    def _forget_leader(self, ld: "_EtcdLeadership") -> None:
        with self._mu:
            self._leaders.discard(ld)

    # --- closing ------------------------------------------------------------

    def close(self) -> None:
        with self._mu:
            if self._closed:
                return
            leaders, watches = list(self._leaders), list(self._watches)
        for ld in leaders:
            ld.close()
        for w in watches:
            w.cancel()
        self._closed = True
        for ep in self._eps:
            ep.close()


def _compare(c: Compare) -> rpc.Compare:
    if c.mod_revision == 0:
        return rpc.Compare(key=c.key.encode(), result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE,
                           create_revision=0)
    return rpc.Compare(key=c.key.encode(), result=rpc.Compare.EQUAL, target=rpc.Compare.MOD,
                       mod_revision=c.mod_revision)


def _kv(kv) -> KeyValue:
    return KeyValue(kv.key.decode(), kv.value, kv.create_revision, kv.mod_revision)


def _requests(q: queue.SimpleQueue):
    while True:
        r = q.get()
        if r is None:
            return
        yield r


class _EtcdWatch(WatchBase):
    def __init__(self, store: EtcdStore, prefix: str, start_revision: int, callback, end: str | None):
        super().__init__(prefix, start_revision, callback, end)
        self._store = store
        self._start_revision = start_revision
        self._key, self._end = _etcd_range(*self.span)
        self._call = None
        self._created = threading.Event()  # first stream created, or failed before that
        self._created_rev = 0
        self._sync = True  # watch() has not returned yet: errors are raised by it
        self._done = threading.Event()

    def _start_sync(self) -> None:
        st = self._store
        self._thread = threading.Thread(target=self._run, name=f"store-watch {self.what}", daemon=True)
        self._thread.start()
        if not self._created.wait(st.timeout * len(st._eps) + 1):
            raise Unavailable(f"etcd watch {self.what}: not created within {st.timeout}s")
        if self.error is None and self._start_revision <= self._created_rev:
            # Compaction is reported on the stream ~100 ms after "created"; a
            # range at the start revision tells at once whether it will come.
            try:
                st._range(rpc.RangeRequest(key=self._key, range_end=self._end, revision=self._start_revision,
                                           count_only=True), "watch")
            except Compacted as e:
                self._done.wait(st.timeout)
                if self.error is None:
                    raise Compacted(0, str(e)) from None
        with self._lock:
            self._sync = False
            err = self.error
        if err is not None:
            raise err

    def _finish(self, err: Exception) -> None:
        with self._lock:
            sync = self._sync and self._next == self._start_revision
            if sync:  # watch() raises it; the callback is never called
                self.error = err
                self._stopped.set()
        if not sync:
            self._fail(err)
        self._created.set()
        self._done.set()

    def _run(self) -> None:
        st = self._store
        backoff = 0.1
        failures = 0
        while not self._stopped.is_set():
            ep = st._order()[0]
            q: queue.SimpleQueue = queue.SimpleQueue()
            q.put(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
                key=self._key, range_end=self._end, start_revision=self._next)))
            try:
                call = ep.watch.Watch(_requests(q))
                with self._lock:
                    if self._stopped.is_set():
                        call.cancel()
                        return
                    self._call = call
                for resp in call:
                    if resp.created:
                        if resp.canceled:
                            raise (Compacted(resp.compact_revision) if resp.compact_revision else
                                   StoreError(f"etcd refused the watch: {resp.cancel_reason}"))
                        if not self._created.is_set():
                            self._created_rev = resp.header.revision
                            self._created.set()
                        backoff, failures = 0.1, 0
                        st._used(ep, True)
                        continue
                    if resp.compact_revision:
                        raise Compacted(resp.compact_revision)
                    if resp.canceled:
                        raise StoreError(f"etcd cancelled the watch: {resp.cancel_reason}")
                    if resp.events and not self._deliver([_event(e) for e in resp.events]):
                        return
            except grpc.RpcError as e:
                if self._stopped.is_set():
                    return
                if not _is_conn_error(e):
                    self._finish(_map_error(e, "watch"))
                    return
                st._used(ep, False)
                failures += 1
                if not self._created.is_set() and failures >= len(st._eps):
                    self._finish(_map_error(e, "watch"))
                    return
                (log.info if failures == 1 else log.debug)(
                    "etcd watch %s: %s: %s; reconnecting from revision %d", self.what, e.code().name,
                    e.details(), self._next)
            except StoreError as e:
                self._finish(e)
                return
            finally:
                q.put(None)
                with self._lock:
                    self._call = None
            self._stopped.wait(backoff)
            backoff = min(backoff * 2, 1.0)

    def cancel(self) -> None:
        with self._lock:
            self._stopped.set()
            call = self._call
        if call is not None:
            call.cancel()
        self._stop_thread()
        self._store._forget_watch(self)


def _event(e) -> Event:
    if e.type == e.DELETE:
        return Event("delete", e.kv.key.decode(), None, e.kv.mod_revision)
    return Event("put", e.kv.key.decode(), e.kv.value, e.kv.mod_revision)


class _EtcdLeadership(Leadership):
    # is_leader() stays True for this fraction of the lease TTL after the last
    # keepalive was SENT (etcd extends the lease when it receives it, later).
    VALID_FRACTION = 0.8

    def __init__(self, store: EtcdStore, name: str, identity: str, ttl: float):
        self._store = store
        self.name = name
        self.identity = identity
        self.key = keys.leader(name)
        self._ttl = max(1, math.ceil(ttl))
        self._granted = self._ttl
        self._mu = threading.Lock()
        self._rev: int | None = None  # the leader key's revision, as we created it
        self._lease: int | None = None
        self._valid_until = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"store-campaign {name}", daemon=True)

    def is_leader(self) -> bool:
        with self._mu:
            return self._rev is not None and time.monotonic() < self._valid_until

    def fence(self) -> Compare:
        rev = self._rev
        return Compare(self.key, rev) if rev is not None else never_holds(self.key)

    def _poll_interval(self) -> float:
        return min(max(self._granted / 4, 0.05), 0.5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self._lead() if self._rev is not None else self._try_acquire()
            except StoreError as e:  # etcd unreachable: keep trying; is_leader() times out by itself
                log.debug("campaign %s: %s", self.name, e)
                wait = self._poll_interval()
            except Exception:
                if self._stop.is_set() or self._store._closed:
                    return
                log.exception("campaign %s: unexpected error", self.name)
                wait = self._poll_interval()
            self._stop.wait(wait)

    def _try_acquire(self) -> float:
        st = self._store
        kv = st._raw_get(self.key)
        if kv is not None:
            if self._lease is not None and kv.lease == self._lease:
                # our create txn went through although its reply was lost
                with self._mu:
                    self._rev = kv.mod_revision
                    self._valid_until = 0.0  # proven by the next keepalive
                return 0
            if self._lease is not None:
                st._revoke(self._lease)
                self._lease = None
            return self._poll_interval()
        t0 = time.monotonic()
        if self._lease is None:
            self._lease, self._granted = st._grant(self._ttl)
        rev = st._txn([Compare(self.key, 0)], [(self.key, self.identity.encode(), self._lease)], [])
        if rev is None:
            return self._poll_interval()
        with self._mu:
            self._rev = rev
            self._valid_until = t0 + self._granted * self.VALID_FRACTION
        log.info("campaign %s: %s is leader (revision %d)", self.name, self.identity, rev)
        return 0  # refresh at once: the lease may be older than t0

    def _lead(self) -> float:
        st = self._store
        t0 = time.monotonic()
        ttl = st._keepalive(self._lease)
        kv = st._raw_get(self.key) if ttl > 0 else None
        if kv is None or kv.mod_revision != self._rev:
            log.warning("campaign %s: %s lost the leadership (%s)", self.name, self.identity,
                        "lease expired" if ttl <= 0 else "leader key changed")
            with self._mu:
                self._rev = None
            if self._lease is not None:
                st._revoke(self._lease)
                self._lease = None
            return 0
        with self._mu:
            self._granted = ttl
            self._valid_until = t0 + ttl * self.VALID_FRACTION
        return ttl / 3

    def resign(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        with self._mu:
            rev, self._rev = self._rev, None
            lease, self._lease = self._lease, None
        st = self._store
        if not st._closed:
            if rev is not None:
                try:
                    st.txn([Compare(self.key, rev)], deletes=[self.key])
                except StoreError as e:
                    log.info("campaign %s: resign: %s (the lease will expire)", self.name, e)
            if lease is not None:
                st._revoke(lease)
        st._forget_leader(self)

    def close(self) -> None:
        self.resign()
