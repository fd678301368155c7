"""The docs against the code. Every CLI error text, output line and default
that README.md and docs/cli.md quote is listed below with the command that
produces it; the test runs that command against a real control plane (the
one test_cli.py starts: embedded store, real gRPC server) or reads the default
from the program's own parser, and checks that what a user sees is exactly
what the doc quotes, and that the doc still quotes it. Change a message or a
default, or the doc, and this fails until both say the same.

Also: the kernel minimum the README and docs/operations.md state, the dump
targets, the examples, and the benchmark verdicts in docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from support import free_port

from socklb import cli

from test_cli import controlplane  # noqa: F401  (a fixture, used by name)

REPO = Path(__file__).resolve().parents[2]


def doc(name: str) -> str:
    """A doc with its whitespace collapsed: a quote may wrap across lines."""
    return " ".join((REPO / name).read_text().split())


def assert_quoted(name: str, text: str) -> None:
    assert " ".join(text.split()) in doc(name), f"{name} no longer quotes: {text}"


# --- CLI messages: (doc, the command as the doc shows it, the message as the doc quotes it) ----------------

@dataclass(frozen=True)
class Quote:
    doc: str
    message: str                  # as the doc quotes it; placeholders (subs) and "..." stand for any text
    argv: tuple[str, ...]         # the socklb command that prints it (without socklb)
    code: int                     # its exit code
    command: bool = True          # the doc shows the command too: "socklb <argv>" must be in the doc
    prefix: str = ""              # the part of the printed line the doc leaves out
    stream: str = "err"           # "err" or "out"
    subs: dict = field(default_factory=dict)  # placeholder -> regex ("{unreachable}" is filled in)
    setup: tuple[tuple[str, ...], ...] = ()   # commands run first (their output is not checked)


WEB = ("service", "put", "-f", "{web_yaml}")           # service "web", one backend
DEMO = ("service", "put", "-f", "examples/web.yaml")   # the README's service "demo/web", two backends

QUOTES = [
    Quote("README.md", "error: INVALID_ARGUMENT: backends[0].address: '300.0.0.1' is not an IPv4 or IPv6 address",
          ("backend", "add", "demo/web", "300.0.0.1:80"), 2, setup=(DEMO,)),
    Quote("docs/cli.md", "error: INVALID_ARGUMENT: service.backends[1].address: '10.0.0.300' is not an IPv4 "
                         "or IPv6 address", ("service", "put", "-f", "{bad_yaml}"), 2, command=False),
    Quote("docs/cli.md", "error: INVALID_ARGUMENT: backends[0].weight: 70000 exceeds 65535",
          ("backend", "add", "web", "10.0.0.1:80@70000"), 2, setup=(WEB,)),
    Quote("docs/cli.md", "error: '10.0.0.1:80@0': weight 0 is refused: the API reads 0 as 1 (to send a backend "
                         "no new flows, drain it)", ("backend", "add", "web", "10.0.0.1:80@0"), 2, setup=(WEB,)),
    Quote("docs/cli.md", "error: NOT_FOUND: service 'web' does not exist", ("service", "get", "web"), 3,
          command=False, setup=(("service", "delete", "web"),)),
    Quote("docs/cli.md", "error: UNAVAILABLE: cannot reach the control plane at HOST:PORT: ...",
          ("--server", "{unreachable}", "--timeout", "5", "service", "list"), 5, command=False,
          subs={"HOST:PORT": "{unreachable}"}),
    Quote("docs/cli.md", "deleted NAME (revision R)", ("service", "delete", "web"), 0, command=False,
          stream="out", subs={"NAME": "web", "R": r"\d+"}, setup=(WEB,)),
    Quote("docs/cli.md", "nothing to delete: NAME (revision R)", ("service", "delete", "web"), 0, command=False,
          stream="out", subs={"NAME": "web", "R": r"\d+"}, setup=(("service", "delete", "web"),)),
    Quote("docs/cli.md", "error: FILE: the file is empty: expected a mapping (a socklb.v1.Workload)",
          ("workload", "put", "-f", "{empty_yaml}"), 2, command=False, subs={"FILE": "{empty_yaml}"}),
    Quote("docs/cli.md", "error: INVALID_ARGUMENT: policy.egress[0].to_fqdns[0]: 'api-*.example.com': a wildcard "
                         "stands only as the first label ...", ("policy", "put", "-f", "{fqdn_yaml}"), 2,
          command=False),
]


def pattern(message: str, subs: dict) -> str:
    """The quote as a regex: literal text, placeholders replaced, "..." = any text."""
    keys = sorted(subs, key=len, reverse=True)
    token = re.compile("|".join([rf"(?<!\w){re.escape(k)}(?!\w)" for k in keys] + [re.escape("...")]))
    out, pos = [], 0
    for m in token.finditer(message):
        out += [re.escape(message[pos:m.start()]), ".+" if m.group() == "..." else subs[m.group()]]
        pos = m.end()
    return "".join(out + [re.escape(message[pos:])])


@pytest.fixture
def run_socklb(controlplane, capsys, tmp_path):  # noqa: F811
    web = tmp_path / "web.yaml"
    web.write_text("name: web\nfrontends: [{address: 127.96.9.1, port: 80}]\n"
                   "backends: [{address: 10.0.0.1, port: 80}]\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: web\nfrontends: [{address: 127.96.9.1, port: 80}]\n"
                   "backends: [{address: 10.0.0.1, port: 80}, {address: 10.0.0.300, port: 80}]\n")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    fqdn = tmp_path / "fqdn.yaml"
    fqdn.write_text("name: fqdn\negress: [{action: ACTION_ALLOW, to_fqdns: ['api-*.example.com']}]\n")
    ctx = {"web_yaml": str(web), "bad_yaml": str(bad), "empty_yaml": str(empty), "fqdn_yaml": str(fqdn),
           "unreachable": f"127.0.0.1:{free_port()}"}

    def run(argv: tuple[str, ...]) -> tuple[int, str, str]:
        argv = [a.format(**ctx) for a in argv]
        code = cli.main(["--server", controlplane.address, *argv])  # a later --server wins
        out, err = capsys.readouterr()
        return code, out, err

    run.ctx = ctx
    return run


@pytest.mark.parametrize("q", QUOTES, ids=lambda q: f"{q.doc}:{q.message[:40]}")
def test_quoted_cli_messages_are_what_the_cli_prints(q: Quote, run_socklb, monkeypatch):
    monkeypatch.chdir(REPO)  # the README's commands run from the repository
    assert_quoted(q.doc, q.message)
    if q.command:
        assert_quoted(q.doc, "socklb " + " ".join(q.argv))
    for argv in q.setup:
        run_socklb(argv)
    code, out, err = run_socklb(q.argv)
    printed = err if q.stream == "err" else out
    subs = {k: v.format(**{k2: re.escape(v2) for k2, v2 in run_socklb.ctx.items()}) for k, v in q.subs.items()}
    assert re.fullmatch(re.escape(q.prefix) + pattern(q.message, subs) + r"\n", printed), (
        f"{q.doc} quotes {q.message!r}; `socklb {' '.join(q.argv)}` prints {printed!r}")
    assert code == q.code, (code, out, err)


def test_delete_json_is_as_quoted(run_socklb):
    quoted = '`{"revision": "R", "existed": true|false}`'
    assert_quoted("docs/cli.md", quoted)
    run_socklb(WEB)
    for existed in (True, False):
        code, out, _ = run_socklb(("-o", "json", "service", "delete", "web"))
        got = json.loads(out)
        assert code == 0 and list(got) == ["revision", "existed"] and got["existed"] is existed, out
        assert isinstance(got["revision"], str) and got["revision"].isdigit()


# --- defaults and limits: (doc, the text the doc shows, the value in the code, the value the text says) -----

def _cli(*argv):
    return cli.parse_args(list(argv))


def _controlplane_defaults():
    from socklb.controlplane.server import build_parser
    return build_parser().parse_args([])


def _dataplane(*argv):
    from socklb.dataplane.cli import build_parser
    return build_parser().parse_args(list(argv))


def _dataplane_choices(command: str, dest: str) -> list[str]:
    """The choices of socklb-dataplane COMMAND's argument `dest`, from its parser."""
    from socklb.dataplane.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(next(a for a in sub.choices[command]._actions if a.dest == dest).choices)


def _flow_readers():
    from socklb.dataplane.cli import FLOW_READERS
    return list(FLOW_READERS)


def _dry_run_sockets():
    from socklb.dataplane.termjobs import MAX_DRY_RUN_SOCKETS
    return MAX_DRY_RUN_SOCKETS


def _terminations():
    from socklb.controlplane import terminations
    return terminations


def _limits():
    from socklb.lb import limits
    return limits


DEFAULTS = [
    ("docs/cli.md", "| `--server HOST:PORT` | `$SOCKLB_SERVER`, else `127.0.0.1:7400` |",
     lambda: _cli("node", "list").server, "127.0.0.1:7400"),
    ("docs/cli.md", "| `-o, --output text\\|json\\|yaml` | `text` |", lambda: _cli("node", "list").output, "text"),
    ("docs/cli.md", "| `--timeout SECONDS` | `10` |", lambda: _cli("node", "list").timeout, 10),
    ("docs/cli.md", "`0` (the default) writes unconditionally",
     lambda: _cli("service", "delete", "web").expected_version, 0),
    ("docs/cli.md", "The default `0` drains without a deadline",
     lambda: _cli("backend", "drain", "web", "10.0.0.1:80").deadline, 0),
    ("docs/cli.md", "It waits up to `--wait` seconds (default 10)", lambda: _cli("terminate", "web").wait, 10),
    ("docs/cli.md", "and waits up to `--wait` seconds (default 10) for the reports",
     lambda: _cli("policy", "put", "-f", "p.yaml", "--dry-run").wait, 10),
    ("docs/cli.md", "With `--from-revision 0` (the default)", lambda: _cli("watch").from_revision, 0),
    ("docs/cli.md", "and (dry run) up to 1000 sockets per node",
     _dry_run_sockets, 1000),
    ("docs/cli.md", "The control plane keeps the newest 1000 terminations", lambda: _terminations().MAX_KEPT, 1000),
    ("docs/cli.md", "none older than a day", lambda: _terminations().RETENTION, 24 * 3600),
    ("README.md", "`socklb-controlplane [--listen 127.0.0.1:7400]", lambda: _controlplane_defaults().listen,
     "127.0.0.1:7400"),
    ("README.md", "[--node-timeout 60]", lambda: _controlplane_defaults().node_timeout, 60),
    ("README.md", "`embedded:///DIR` (default `/var/lib/socklb/controlplane`)",
     lambda: _controlplane_defaults().store, "embedded:///var/lib/socklb/controlplane"),
    ("README.md", "links pinned under `--pin-dir` (default `/sys/fs/bpf/socklb`)",
     lambda: _dataplane("run").pin_dir, "/sys/fs/bpf/socklb"),
    ("README.md", "the socket-LB programs to the cgroup `socklb`", lambda: _dataplane("run").cgroup, "socklb"),
    ("README.md", "[--flow-reader auto|map-iter|socket-iter]",
     _flow_readers, ["auto", "map-iter", "socket-iter"]),
    ("README.md", "[--terminate-method auto|kfunc|netlink]",
     lambda: _dataplane_choices("run", "terminate_method"), ["auto", "kfunc", "netlink"]),
    ("README.md",
     "`socklb-dataplane dump services|backends|flows|counters|state|info|terminations|sockets|workloads|policy|fqdn "
     "[-o json]`",
     lambda: _dataplane_choices("dump", "what"),
     ["services", "backends", "flows", "counters", "state", "info", "terminations", "sockets", "workloads",
      "policy", "fqdn"]),
    ("README.md", "per service at most 64 frontends", lambda: _limits().MAX_FRONTENDS, 64),
    ("docs/cli.md", "`..` components, at most 16 levels)", lambda: _limits().MAX_CGROUP_DEPTH, 16),
    ("docs/cli.md", "labels and selectors as Kubernetes labels, at most 64", lambda: _limits().MAX_LABELS, 64),
    ("docs/cli.md", "are IP addresses, each once, at most 16.", lambda: _limits().MAX_ADDRESSES_PER_WORKLOAD, 16),
    ("docs/cli.md", "Per policy at most 256 rules and 16384 prefixes",
     lambda: (_limits().MAX_RULES_PER_POLICY, _limits().MAX_CIDRS_PER_POLICY), (256, 16384)),
    ("docs/cli.md", "per rule 256 services and 16 port ranges",
     lambda: (_limits().MAX_SERVICES_PER_RULE, _limits().MAX_PORTS_PER_RULE), (256, 16)),
    ("docs/cli.md", "no prefix may carry more than 16 port rules", lambda: _limits().MAX_PORT_RULES, 16),
    ("README.md", "and 4096 backends", lambda: _limits().MAX_BACKENDS, 4096),
    ("README.md", "up to 1021 active with MAGLEV", lambda: _limits().MAGLEV_TABLE_SIZE, 1021),
    ("README.md", "Maglev with a fixed size of 1021", lambda: _limits().MAGLEV_TABLE_SIZE, 1021),
]


@pytest.mark.parametrize("name, text, actual, said", DEFAULTS, ids=[f"{d[0]}:{d[1][:40]}" for d in DEFAULTS])
def test_quoted_defaults_are_the_code_defaults(name, text, actual, said, monkeypatch):
    for var in ("SOCKLB_SERVER", "SOCKLB_LISTEN", "SOCKLB_STORE", "SOCKLB_FLOW_READER"):
        monkeypatch.delenv(var, raising=False)
    assert_quoted(name, text)
    assert actual() == said, f"{name} says {text!r}; the code has {actual()!r}"


def test_dataplane_validation_names_the_field_the_readme_quotes():
    from socklb.dataplane.desired import frontend_targets
    from socklb.lb.errors import InvalidState
    from socklb.dataplane.statefile import parse_state

    assert_quoted("README.md", "validation first (errors name the field, e.g. `services[0].frontends[1].address`)")
    state = parse_state("services:\n  - name: web\n    frontends: [{address: 127.96.0.10, port: 80},"
                        " {address: 127.96.0.300, port: 80}]\n    backends: [{address: 127.0.0.2, port: 80}]\n")
    with pytest.raises(InvalidState) as e:
        frontend_targets(state)
    assert e.value.field == "services[0].frontends[1].address"


# --- one statement of what the kernel must have -----------------------------------------------------------

def test_kernel_minimum_is_stated_once_the_same_way():
    from socklb.dataplane import sockdestroy

    for name in ("README.md", "docs/operations.md"):
        assert_quoted(name, "Linux ≥ 5.18")
        assert_quoted(name, "cgroup v2")
        assert_quoted(name, "Linux ≥ 6.5")  # bpf_sock_destroy, else netlink
    # The datapath needs bpf_set_retval() (5.18), which is why 5.18 is the floor.
    assert "bpf_set_retval(" in (REPO / "bpf/sock_lb.c").read_text()
    assert_quoted("README.md", "`bpf_set_retval()` (5.18;")
    assert "needs Linux >= 6.5" in Path(sockdestroy.__file__).read_text()


# --- examples ------------------------------------------------------------------------------------------

def test_examples_are_what_their_comments_say():
    from socklb.dataplane.desired import frontend_targets
    from socklb.dataplane.statefile import parse_state

    standalone = (REPO / "examples/standalone.yaml").read_text()
    assert "`make standalone`" in standalone and "socklb-dataplane run --state examples/standalone.yaml" in standalone
    assert frontend_targets(parse_state(standalone))  # a valid NodeState
    makefile = (REPO / "Makefile").read_text()
    assert "STATE ?= examples/standalone.yaml" in makefile
    assert re.search(r"^standalone:.*\n\t.*socklb\.dataplane\.cli run --state \$\(STATE\)$", makefile, re.M)
    assert cli.load_service(str(REPO / "examples/web.yaml")).name == "demo/web"


# --- benchmark verdicts -----------------------------------------------------------------------------------

def test_benchmark_verdict_is_decided_by_the_per_round_quartiles():
    from bench.report import verdict

    nan = float("nan")
    assert verdict((">=", 0.97), 0.817, 0.953, 1.078) == "borderline"  # the run docs/benchmarks.md records
    assert verdict((">=", 0.97), 0.97, 0.99, 1.02) == "met"
    assert verdict((">=", 0.97), 0.90, 0.95, 0.969) == "not met"
    assert verdict((">", 1.0), 1.0, 1.1, 1.2) == "borderline"           # ">" : exactly 1 does not meet it
    assert verdict((">", 1.0), 1.072, 1.190, 1.308) == "met"
    assert verdict((">=", 3.0), nan, 3.1, nan) == "met"                 # one round: the median alone
    assert verdict((">=", 3.0), nan, nan, nan) == ""


def test_benchmark_doc_verdicts_follow_the_rule():
    from bench.report import verdict

    text = (REPO / "docs/benchmarks.md").read_text()
    lines = re.findall(r"^- .*per-round median \*\*([\d.]+)x\*\* \(quartiles ([\d.]+)–([\d.]+);.*— target "
                       r"(≥|>) ([\d.]+)x: (met|borderline|not met) in this run.*$", text, re.M)
    assert len(lines) >= 2, "docs/benchmarks.md states no target verdicts"
    for med, q1, q3, sign, bound, said in lines:
        op = ">=" if sign == "≥" else ">"
        assert verdict((op, float(bound)), float(q1), float(med), float(q3)) == said, (med, q1, q3, sign, bound, said)
    assert not re.search(r"\*\*[\d.]+x\*\* \(per-round ratios", text), "a headline in the old form (ratio of medians first)"


def test_architecture_gives_every_module_a_line():
    """docs/architecture.md lists every module of socklb/ with its job: a
    module added without a line there fails here (the generated socklb/v1 and
    the bpf/ symlink are listed as one row each)."""
    text = (REPO / "docs/architecture.md").read_text()
    missing = []
    for path in sorted((REPO / "socklb").rglob("*.py")):
        rel = path.relative_to(REPO / "socklb")
        if rel.parts[0] in ("v1", "bpf") or path.name in ("__init__.py", "__main__.py"):
            continue
        if f"`{path.stem}`" not in text and f"/{path.stem}`" not in text:
            missing.append(str(rel))
    assert not missing, f"docs/architecture.md does not list {missing}"
    for word in ("master slot", "Programmed", "graveyard", "keep_flows", "released"):
        assert word in (REPO / "docs/glossary.md").read_text(), word
