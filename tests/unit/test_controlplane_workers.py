"""--workers: which flags can run several worker processes (workers.check),
and the command line each further worker gets."""
from socklb.controlplane import workers
from socklb.controlplane.server import build_parser


def test_several_workers_need_a_shared_store_and_a_given_port():
    assert workers.check(1, "127.0.0.1:0", "embedded:///var/lib/x") == ""
    assert workers.check(2, "127.0.0.1:7400", "etcd://127.0.0.1:2379") == ""
    assert "etcd" in workers.check(2, "127.0.0.1:7400", "embedded:///var/lib/x")
    assert "not 0" in workers.check(2, "127.0.0.1:0", "etcd://127.0.0.1:2379")
    assert "unix" in workers.check(2, "unix:/run/cp.sock", "etcd://127.0.0.1:2379")
    assert "at least 1" in workers.check(0, "127.0.0.1:7400", "etcd://127.0.0.1:2379")


def test_a_worker_keeps_the_flags_and_shares_the_port_under_its_own_name():
    argv = ["--listen", "127.0.0.1:7400", "--store", "etcd://e:2379", "--workers", "3", "--metrics-listen", ":9090"]
    child = workers.worker_argv(argv, 2, "cp")
    args = build_parser().parse_args(child[3:])
    assert child[1:3] == ["-m", "socklb.controlplane.server"]
    assert (args.listen, args.store, args.workers, args.reuse_port, args.replica_id, args.metrics_listen) == \
        ("127.0.0.1:7400", "etcd://e:2379", 1, True, "cp-w2", "")
