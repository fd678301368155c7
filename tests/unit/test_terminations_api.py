"""TerminateFlows is bounded by the service (a request names the service's
backends, each once), termination records are kept to the newest ones and
pruned by the leader, and the list is paged — so no caller can grow the
store without bound or make the list too large to answer."""
import time

import grpc
import pytest

from socklb.controlplane import terminations
from socklb.v1 import api_pb2

from test_sync import Server, service, wait_for


def error(call):
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code(), e.value.details()


def ref(address, port=80):
    return api_pb2.BackendRef(address=address, port=port)


def test_a_request_names_backends_of_the_service_each_once(server):
    api = server.api
    api.PutService(api_pb2.PutServiceRequest(service=service("a", "127.96.0.10", ["10.0.0.1", "10.0.0.2"])))
    api.RemoveBackends(api_pb2.RemoveBackendsRequest(service="a", backends=[ref("10.0.0.2")], keep_sockets=True))
    before = api.ListServices(api_pb2.ListServicesRequest()).revision
    for refs, field, why in [
        ([ref("10.0.0.9")], "backends[0]", "is not a backend of service 'a'"),
        ([ref("10.0.0.1"), ref("10.0.0.1", 81)], "backends[1]", "is not a backend"),
        ([ref("10.0.0.1"), ref("10.0.0.1")], "backends[1]", "duplicate of backends[0]"),
        ([ref(f"10.1.{i >> 8}.{i & 255}") for i in range(10000)], "backends[0]", "is not a backend"),
    ]:
        code, details = error(lambda: api.TerminateFlows(api_pb2.TerminateFlowsRequest(
            service="a", backends=refs, dry_run=True)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(field + ":") and why in details
    assert api.ListServices(api_pb2.ListServicesRequest()).revision == before  # nothing written
    # A current backend and one removed with keep_sockets (in another spelling) are fine.
    t = api.TerminateFlows(api_pb2.TerminateFlowsRequest(
        service="a", backends=[ref("10.0.0.1"), ref("::ffff:10.0.0.2")], dry_run=True))
    assert t.id.startswith("t-")


def test_the_list_is_paged_newest_first(server):
    api = server.api
    api.PutService(api_pb2.PutServiceRequest(service=service("a", "127.96.0.10", ["10.0.0.1"])))
    made = [api.TerminateFlows(api_pb2.TerminateFlowsRequest(service="a", dry_run=True)).id for _ in range(5)]
    seen, token, pages = [], "", 0
    while True:
        page = api.ListTerminations(api_pb2.ListTerminationsRequest(page_size=2, page_token=token))
        assert len(page.terminations) <= 2
        seen += [t.id for t in page.terminations]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3 and seen == list(reversed(made))
    code, details = error(lambda: api.ListTerminations(api_pb2.ListTerminationsRequest(page_token="garbage")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("page_token:"), details
    code, details = error(lambda: api.ListTerminations(api_pb2.ListTerminationsRequest(page_size=1001)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("page_size:"), details


def test_the_leader_prunes_beyond_the_newest_and_the_old(tmp_path):
    s = Server(f"embedded://{tmp_path}/store", duty_interval=0.1, terminations_kept=3, prune_interval=0.2)
    try:
        api = s.api
        api.PutService(api_pb2.PutServiceRequest(service=service("a", "127.96.0.10", ["10.0.0.1"])))
        made = [api.TerminateFlows(api_pb2.TerminateFlowsRequest(service="a", dry_run=True)).id for _ in range(6)]

        def listed():
            return [t.id for t in api.ListTerminations(api_pb2.ListTerminationsRequest()).terminations]
        wait_for(lambda: listed() == list(reversed(made))[:3], "pruned to the newest 3", timeout=30)
        kvs, _ = s.store.range("/socklb/terminations/")
        assert {kv.key.split("/")[3] for kv in kvs} == set(made[3:])
    finally:
        s.close()


def test_expired_by_age_and_count():
    def t(tid, seconds_ago):
        x = api_pb2.Termination(id=tid)
        x.created.FromNanoseconds(now - int(seconds_ago * 1e9))
        return x
    now = time.time_ns()
    items = [t("a", 1), t("b", 2), t("c", 90000), t("d", 3)]
    assert terminations.expired(items, now, keep=10) == ["c"]  # older than a day
    assert terminations.expired(items, now, keep=2) == ["c", "d"]
