"""The deployment files against the code: docker-compose.yml, deploy/Dockerfile.*,
deploy/dataplane-entrypoint.sh and deploy/k8s/*.yaml.

"What exists" is derived from the code, so these checks keep passing as flags
and variables are added, and fail when a file uses one the code lacks:

- commands: every socklb program that a container, healthcheck or probe runs
  is a console script of pyproject.toml, and its argv (image ENTRYPOINT/CMD
  combined with compose's command or Kubernetes' command/args, as Docker and
  the kubelet combine them) parses with that program's own argparse parser
  (``build_parser()``) under the container's environment, with no abbreviated
  option;
- environment variables: read in socklb/ (``os.environ.get("X")``,
  ``os.getenv("X")``, ``os.environ["X"]``), or standard OpenTelemetry SDK
  variables (read by the SDK, not argparse), or (Kubernetes) only used for
  ``$(X)`` expansion in the same container;
- ports: the address the control plane listens on, resolved as the code does
  (--listen, else SOCKLB_LISTEN, else the default), is the one published,
  health-checked, probed and targeted by the Service; the dataplane's
  --controlplane addresses reach every replica; --store reaches etcd's client
  port; OTLP endpoints reach Jaeger's OTLP port for their protocol; /metrics
  ports are published (compose) or declared and annotated (Kubernetes);
- schemas, offline: compose against the compose-spec JSON schema shipped by
  check-jsonschema, Kubernetes objects against the OpenAPI schemas bundled by
  kubernetes-validate in strict mode (an unknown field fails).

Images cannot be built and manifests cannot be applied here (no Docker engine,
no cluster); the control-plane commands of the compose file are run for real
on a local etcd instead (test_compose_control_planes_run_on_etcd).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import io
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from support import free_ports, in_ci

from socklb.lb.addresses import split_host_port

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_MTLS = REPO / "docker-compose.mtls.yml"  # merged over COMPOSE: the "mtls" variant
COMPOSE_VARIANTS = pytest.mark.parametrize("variant", ["base", "mtls"])
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
ENTRYPOINT_SCRIPT = DEPLOY / "dataplane-entrypoint.sh"
ENTRYPOINT_WRAPPER = "/usr/local/bin/socklb-dataplane-entrypoint"  # where the dataplane image installs it
ETCD = os.environ.get("SOCKLB_TEST_ETCD", "/usr/bin/etcd")

# Jaeger v2's image defaults (OTLP receivers): the port for each
# OTEL_EXPORTER_OTLP_PROTOCOL value.
JAEGER_OTLP_PORTS = {"grpc": 4317, "http/protobuf": 4318, "http/json": 4318}

# Host paths the dataplane needs -> (where it is mounted in the container,
# read-only?). /proc comes with the host PID namespace. Kernel headers go
# under /host: deploy/dataplane-entrypoint.sh links them for bcc.
DATAPLANE_HOST_PATHS = {
    "/sys/fs/bpf": ("/sys/fs/bpf", False),
    "/sys/fs/cgroup": ("/sys/fs/cgroup", False),
    "/lib/modules": ("/host/lib/modules", True),
    "/usr/src": ("/host/usr/src", True),
    "/run/netns": ("/run/netns", None),
    "/sys/kernel/btf": ("/sys/kernel/btf", True),
}
DATAPLANE_APT = {"python3", "python3-bpfcc", "bpfcc-tools", "clang", "llvm", "libbpf-dev", "bpftool",
                 "linux-headers-amd64", "iproute2"}
# Variables an image may set besides the code's (interpreter and shell).
IMAGE_ENV = {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "DEBIAN_FRONTEND"}

# Standard OpenTelemetry SDK configuration (the specification's environment
# variables). When the OpenTelemetry packages are installed, the names they
# define are added (known_otel_names).
_OTLP_KEYS = ("ENDPOINT", "PROTOCOL", "HEADERS", "TIMEOUT", "COMPRESSION", "INSECURE", "CERTIFICATE",
              "CLIENT_KEY", "CLIENT_CERTIFICATE")
OTEL_SPEC = {
    "OTEL_SDK_DISABLED", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_SERVICE_NAME", "OTEL_LOG_LEVEL", "OTEL_PROPAGATORS",
    "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER",
    "OTEL_LOGS_EXPORTER", "OTEL_BSP_SCHEDULE_DELAY", "OTEL_BSP_EXPORT_TIMEOUT", "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "OTEL_BLRP_SCHEDULE_DELAY", "OTEL_BLRP_EXPORT_TIMEOUT",
    "OTEL_BLRP_MAX_QUEUE_SIZE", "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_ATTRIBUTE_COUNT_LIMIT", "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_SPAN_EVENT_COUNT_LIMIT", "OTEL_SPAN_LINK_COUNT_LIMIT", "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT", "OTEL_METRIC_EXPORT_INTERVAL", "OTEL_METRIC_EXPORT_TIMEOUT",
    "OTEL_METRICS_EXEMPLAR_FILTER", "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
    "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION", "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS",
    *(f"OTEL_EXPORTER_OTLP_{k}" for k in _OTLP_KEYS),
    *(f"OTEL_EXPORTER_OTLP_{s}_{k}" for s in ("TRACES", "METRICS", "LOGS") for k in _OTLP_KEYS),
}

# The manifests are checked against this Kubernetes version (or the oldest
# schemas kubernetes-validate bundles, if it no longer has it) and the newest.
K8S_MIN_VERSION = "1.30.0"


def need(cond: bool, msg: str) -> None:
    """Skip when something optional is missing, but fail under CI=true (CI
    must never go green by skipping)."""
    if not cond:
        if in_ci():
            pytest.fail(f"{msg}; CI=true, so not skipping", pytrace=False)
        pytest.skip(msg)


# --- what the code has ------------------------------------------------------------

def console_scripts() -> dict[str, str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def _parsers() -> dict[str, object]:
    from socklb import certs, cli
    from socklb.controlplane import server
    from socklb.dataplane import cli as dataplane_cli

    return {"socklb": cli.build_parser, "socklb-controlplane": server.build_parser,
            "socklb-dataplane": dataplane_cli.build_parser, "socklb-certs": certs.build_parser}


_ENV_READ = [
    re.compile(r"""\b(?:environ\.get|getenv|environ\.setdefault)\(\s*["']([A-Za-z_][A-Za-z0-9_]*)["']"""),
    re.compile(r"""\benviron\[\s*["']([A-Za-z_][A-Za-z0-9_]*)["']\s*\]"""),
]


@functools.cache
def code_env_names() -> set[str]:
    """Environment variables read anywhere in socklb/."""
    names: set[str] = set()
    for path in (REPO / "socklb").rglob("*.py"):
        text = path.read_text(errors="replace")
        for rx in _ENV_READ:
            names.update(rx.findall(text))
    return names


@functools.cache
def known_otel_names() -> set[str]:
    names = set(OTEL_SPEC)
    for mod in ("opentelemetry.environment_variables", "opentelemetry.sdk.environment_variables"):
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        names |= {v for k, v in vars(m).items() if k.startswith("OTEL_") and isinstance(v, str)}
    return names


def serves_grpc_health() -> bool:
    """Whether socklb/ registers a grpc.health.v1 servicer (what gRPC probes call)."""
    return any("add_HealthServicer_to_server" in p.read_text(errors="replace")
               for p in (REPO / "socklb").rglob("*.py"))


def unknown_env(names, expansion_only=()) -> list[str]:
    known = code_env_names() | known_otel_names() | set(expansion_only)
    return sorted(set(names) - known)


class ArgvError(AssertionError):
    pass


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    out: set[str] = set()
    for action in parser._actions:
        out.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out |= _option_strings(sub)
    return out


def parse_argv(argv: list[str], env: dict[str, str] | None = None) -> tuple[str, argparse.Namespace]:
    """Parse a socklb command line as the program would inside a container
    whose environment is exactly `env` (the SOCKLB_* defaults are read when
    the parser is built). Raises ArgvError naming what is wrong."""
    assert argv, "empty command"
    prog = os.path.basename(argv[0])
    if prog not in console_scripts():
        raise ArgvError(f"{argv[0]!r} is not a console script of pyproject.toml {sorted(console_scripts())}")
    parsers = _parsers()
    if prog not in parsers:
        raise ArgvError(f"{prog}: add its build_parser() to _parsers() in this test")
    err = io.StringIO()
    with mock.patch.dict(os.environ, env or {}, clear=True), contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(io.StringIO()):
        parser = parsers[prog]()
        try:
            ns = parser.parse_args(argv[1:])
        except SystemExit:
            raise ArgvError(f"{shlex.join(argv)}: {err.getvalue().strip() or 'exited'}") from None
    exact = _option_strings(parser)
    for tok in argv[1:]:
        if tok == "--":
            break
        if tok.startswith("--") and tok.split("=", 1)[0] not in exact:
            raise ArgvError(f"{shlex.join(argv)}: {tok.split('=', 1)[0]} is not an option of {prog} "
                            "(abbreviations are not allowed in deployment files)")
    return prog, ns


def hostport(addr: str) -> tuple[str, int]:
    host, port = split_host_port(addr)
    assert host and port is not None and port.isdigit(), f"{addr!r}: expected HOST:PORT"
    return host, int(port)


def flag_values(argv: list[str], flag: str) -> list[str]:
    """Values of --flag in an argv (--flag=V or --flag V)."""
    out = []
    for i, tok in enumerate(argv):
        if tok.startswith(flag + "="):
            out.append(tok.split("=", 1)[1])
        elif tok == flag and i + 1 < len(argv):
            out.append(argv[i + 1])
    return out


def as_list(cmd) -> list[str]:
    if cmd is None:
        return []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


# --- Dockerfiles --------------------------------------------------------------------

@functools.cache
def dockerfile(path: Path) -> dict:
    """The instructions of a Dockerfile: every stage's FROM, and the final
    stage's ENV, ENTRYPOINT, CMD, COPY and RUN (continuations joined)."""
    lines, cur = [], ""
    for raw in path.read_text().splitlines():
        s = raw.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if cur and s.startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        lines.append(cur + s)
        cur = ""
    out = {"from": [], "stages": []}
    stage = None
    for line in lines:
        op, _, rest = line.partition(" ")
        op, rest = op.upper(), rest.strip()
        if op == "FROM":
            out["from"].append(rest.split()[0])
            stage = {"env": {}, "entrypoint": None, "cmd": None, "copy": [], "run": []}
            out["stages"].append(stage)
        elif stage is None:
            continue
        elif op == "ENV":
            for item in shlex.split(rest):
                k, _, v = item.partition("=")
                stage["env"][k] = v
        elif op in ("ENTRYPOINT", "CMD"):
            stage[op.lower()] = yaml.safe_load(rest) if rest.startswith("[") else ["/bin/sh", "-c", rest]
        elif op == "COPY":
            stage["copy"].append(rest.split())
        elif op == "RUN":
            stage["run"].append(rest)
    final = out["stages"][-1]
    return {**out, **final}


# --- docker-compose.yml ---------------------------------------------------------------

def _merge(base, over, key: str = ""):
    """Compose's merge of an override file: mappings merge, `command`,
    `entrypoint` and healthcheck `test` are replaced, `volumes` merge by
    target, other sequences are appended."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v, k) if k in base else v
        return out
    if isinstance(base, list) and isinstance(over, list):
        if key in ("command", "entrypoint", "test"):
            return over
        if key == "volumes":
            def target(v):
                return v["target"] if isinstance(v, dict) else str(v).split(":")[1]
            targets = {target(v) for v in over}
            return [v for v in base if target(v) not in targets] + over
        return base + over
    return over


@functools.cache
def compose(variant: str = "base") -> dict:
    c = yaml.safe_load(COMPOSE.read_text())
    return _merge(c, yaml.safe_load(COMPOSE_MTLS.read_text())) if variant == "mtls" else c


def compose_env(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def built_images() -> dict[str, Path]:
    """Image name -> Dockerfile, for the compose services built from deploy/."""
    out = {}
    for svc in compose()["services"].values():
        b = svc.get("build")
        if b:
            ctx = REPO / (b if isinstance(b, str) else b.get("context", "."))
            out[svc["image"]] = (ctx / (b.get("dockerfile", "Dockerfile") if isinstance(b, dict) else "Dockerfile"))
    return out


def strip_wrapper(argv: list[str]) -> list[str]:
    return argv[1:] if argv[:1] == [ENTRYPOINT_WRAPPER] else argv


def compose_argv(svc: dict, df: dict) -> list[str]:
    """Docker's rule: compose `entrypoint` replaces ENTRYPOINT and drops the
    image's CMD; `command` replaces CMD."""
    if "entrypoint" in svc:
        argv = as_list(svc["entrypoint"]) + as_list(svc.get("command"))
    else:
        argv = (df["entrypoint"] or []) + (as_list(svc["command"]) if "command" in svc else (df["cmd"] or []))
    return strip_wrapper(argv)


def healthcheck_argv(svc: dict) -> list[str] | None:
    test = (svc.get("healthcheck") or {}).get("test")
    if isinstance(test, list) and test[:1] == ["CMD"]:
        return test[1:]
    if isinstance(test, list) and test[:1] == ["CMD-SHELL"]:
        return shlex.split(test[1])
    return shlex.split(test) if isinstance(test, str) else None


def published(svc: dict) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) of a service's `ports`."""
    out = []
    for p in svc.get("ports") or []:
        if isinstance(p, dict):
            out.append((p.get("host_ip", "0.0.0.0"), int(p["published"]), int(p["target"])))
            continue
        parts = str(p).split("/")[0].split(":")
        if len(parts) == 1:
            continue  # an ephemeral host port: nothing to match
        ip = ":".join(parts[:-2]) or "0.0.0.0"
        out.append((ip, int(parts[-2]), int(parts[-1])))
    return out


def our_compose_services(variant: str = "base"):
    """(name, service, Dockerfile instructions, container env) of the services
    running an image built from deploy/."""
    images = built_images()
    for name, svc in compose(variant)["services"].items():
        if svc.get("image") in images:
            df = dockerfile(images[svc["image"]])
            yield name, svc, df, {**df["env"], **compose_env(svc)}


def compose_programs(variant: str = "base") -> dict[str, list[tuple[str, argparse.Namespace, dict]]]:
    """Program -> [(service, parsed args, service)] for the main command of
    every service built here."""
    out: dict[str, list] = {}
    for name, svc, df, env in our_compose_services(variant):
        prog, ns = parse_argv(compose_argv(svc, df), env)
        out.setdefault(prog, []).append((name, ns, svc))
    return out


# --- deploy/k8s -------------------------------------------------------------------------

def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@functools.cache
def k8s_docs() -> list[dict]:
    docs = []
    for p in k8s_files():
        docs += [d for d in yaml.safe_load_all(p.read_text()) if d]
    return docs


def k8s_find(kind: str, name: str | None = None) -> list[dict]:
    return [d for d in k8s_docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


WORKLOADS = ("Deployment", "DaemonSet", "StatefulSet", "Job")


def k8s_containers():
    """(workload, pod spec, container) for every container and init container."""
    for d in k8s_docs():
        if d["kind"] in WORKLOADS:
            pod = d["spec"]["template"]["spec"]
            for c in pod.get("initContainers", []) + pod["containers"]:
                yield d, pod, c


_EXPANSION = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(s: str, env: dict[str, str]) -> str:
    return _EXPANSION.sub(lambda m: env.get(m[1], m[0]), s)


def k8s_env(container: dict) -> dict[str, str]:
    """A container's environment as the kubelet builds it: ConfigMap keys and
    field references resolved, $(VAR) expanded from the variables before."""
    env: dict[str, str] = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = expand(str(e["value"]), env)
            continue
        src = e["valueFrom"]
        if "configMapKeyRef" in src:
            ref = src["configMapKeyRef"]
            cms = k8s_find("ConfigMap", ref["name"])
            assert cms, f"{e['name']}: ConfigMap {ref['name']} is not in deploy/k8s"
            assert ref["key"] in cms[0]["data"], f"{e['name']}: ConfigMap {ref['name']} has no key {ref['key']}"
            env[e["name"]] = str(cms[0]["data"][ref["key"]])
        elif "fieldRef" in src:
            env[e["name"]] = f"<{src['fieldRef']['fieldPath']}>"
        else:
            env[e["name"]] = "<ref>"
    return env


def expansion_only(container: dict) -> set[str]:
    """Variables referenced as $(VAR) in the container's command, args or
    other variables (the kubelet expands them)."""
    texts = as_list(container.get("command")) + as_list(container.get("args"))
    texts += [str(e.get("value", "")) for e in container.get("env", [])]
    return {m for t in texts for m in _EXPANSION.findall(t)}


def k8s_argv(container: dict, df: dict, env: dict[str, str]) -> list[str]:
    """The kubelet's rule: `command` replaces ENTRYPOINT (and the image's CMD),
    `args` replaces CMD."""
    if "command" in container:
        argv = as_list(container["command"]) + as_list(container.get("args"))
    else:
        argv = (df["entrypoint"] or []) + (as_list(container["args"]) if "args" in container else (df["cmd"] or []))
    return strip_wrapper([expand(a, env) for a in argv])


def our_k8s_containers():
    """(workload, pod, container, Dockerfile instructions, env) for the
    containers running an image built from deploy/."""
    images = built_images()
    for d, pod, c in k8s_containers():
        if c["image"] in images:
            df = dockerfile(images[c["image"]])
            yield d, pod, c, df, {**df["env"], **k8s_env(c)}


def k8s_programs() -> dict[str, list]:
    out: dict[str, list] = {}
    for d, pod, c, df, env in our_k8s_containers():
        prog, ns = parse_argv(k8s_argv(c, df, env), env)
        out.setdefault(prog, []).append((d, pod, c, ns))
    return out


def container_port(container: dict, port) -> int:
    """A probe's or Service's port (number or name) as a number."""
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    raise AssertionError(f"container {container['name']} has no port named {port!r}")


# === the checker itself ===================================================================

def test_checker_rejects_unknown_flags_abbreviations_and_variables():
    # What the other tests rely on: a flag or variable the code lacks fails.
    with pytest.raises(ArgvError, match="no-such-flag"):
        parse_argv(["socklb-controlplane", "--no-such-flag=1"])
    with pytest.raises(ArgvError, match="abbreviations"):
        parse_argv(["socklb-dataplane", "run", "--controlp=127.0.0.1:7400"])
    with pytest.raises(ArgvError, match="console script"):
        parse_argv(["socklb-agent", "run"])
    with pytest.raises(ArgvError):
        parse_argv(["socklb-dataplane", "dump", "everything"])
    _, ns = parse_argv(["socklb-controlplane"], {"SOCKLB_LISTEN": "0.0.0.0:7999"})
    assert ns.listen == "0.0.0.0:7999"  # the container's environment feeds the defaults
    assert {"SOCKLB_LISTEN", "SOCKLB_STORE", "SOCKLB_REPLICA_ID", "SOCKLB_CONTROLPLANE"} <= code_env_names()
    assert unknown_env(["SOCKLB_NO_SUCH_VARIABLE", "OTEL_EXPORTER_OTLP_ENDPIONT", "OTEL_SERVICE_NAME"]) == \
        ["OTEL_EXPORTER_OTLP_ENDPIONT", "SOCKLB_NO_SUCH_VARIABLE"]


# === schemas ======================================================================================

def need_module(name: str):
    """importorskip that fails under CI=true like every other guard."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        need(False, f"{name} is not installed ({e}): make setup installs it")


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_MTLS], ids=lambda p: p.name)
def test_compose_file_matches_the_compose_spec(path):
    # check-jsonschema ships the compose-spec JSON schema (vendor.compose-spec).
    need_module("check_jsonschema")
    r = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                        str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_k8s_manifests_match_the_kubernetes_schemas():
    kv = need_module("kubernetes_validate")
    bundled = sorted(kv.utils.all_versions(), key=lambda v: tuple(int(x) for x in v.split(".")))
    newest = kv.utils.latest_version()
    oldest = K8S_MIN_VERSION if kv.utils.major_minor(K8S_MIN_VERSION) in map(kv.utils.major_minor, bundled) \
        else bundled[0]
    docs = k8s_docs()
    assert {d["kind"] for d in docs} >= {"Namespace", "ConfigMap", "ServiceAccount", "Role", "RoleBinding",
                                         "Deployment", "Service", "DaemonSet", "StatefulSet", "Job",
                                         "NetworkPolicy"}
    errors = []
    for d in docs:
        for version in (oldest, newest):
            try:
                kv.validate(d, version, strict=True)
            except (kv.ValidationError, kv.SchemaNotFoundError) as e:
                errors.append(f"{d['kind']}/{d['metadata']['name']} (k8s {version}): {e}")
    assert not errors, "\n".join(errors)


def test_kustomization_lists_every_manifest():
    k = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(k["resources"]) == sorted(p.name for p in k8s_files())


# === commands and flags ===============================================================================

@COMPOSE_VARIANTS
def test_compose_commands_and_healthchecks_parse(variant):
    progs = compose_programs(variant)
    assert set(progs) == {"socklb-controlplane", "socklb-dataplane"} | ({"socklb-certs"} if variant == "mtls" else set())
    for name, svc, df, env in our_compose_services(variant):
        if svc.get("restart") == "no":
            continue  # a one-shot job (certs): nothing to check the health of
        hc = healthcheck_argv(svc)
        assert hc, f"{name}: no healthcheck"
        parse_argv(hc, env)  # the healthcheck runs a socklb command too


def test_k8s_commands_and_probes_parse():
    progs = k8s_programs()
    assert set(progs) == {"socklb-controlplane", "socklb-dataplane", "socklb-certs"}
    for d, pod, c, df, env in our_k8s_containers():
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            p = c.get(probe) or {}
            if "exec" in p:
                parse_argv(p["exec"]["command"], env)
    # The images of the workloads are the ones compose builds from deploy/.
    for d, pod, c in k8s_containers():
        if c["image"].startswith("socklb/"):
            assert c["image"] in built_images(), f"{c['image']}: not built by docker-compose.yml"


def test_etcd_flags_exist_in_etcd():
    need(os.path.isfile(ETCD) and os.access(ETCD, os.X_OK),
         f"etcd not found at {ETCD} (Debian package etcd-server; scripts/setup.sh installs it)")
    r = subprocess.run([ETCD, "--help"], capture_output=True, text=True, timeout=60)
    helptext = r.stdout + r.stderr
    argvs = [as_list(compose(v)["services"]["etcd"]["command"]) for v in ("base", "mtls")]
    argvs += [as_list(c.get("command")) + as_list(c.get("args")) for _, _, c in k8s_containers()
              if "etcd" in c["image"]]
    for argv in argvs:
        assert os.path.basename(argv[0]) == "etcd", argv
        for tok in argv[1:]:
            flag = tok.split("=", 1)[0]
            assert re.search(rf"(^|\s){re.escape(flag)}\b", helptext, re.M), f"etcd has no {flag}"


# === environment variables ===========================================================================

def test_environment_variables_are_read_by_the_code_or_otel():
    bad = []
    for variant in ("base", "mtls"):
        for name, svc, df, env in our_compose_services(variant):
            bad += [f"docker-compose ({variant}) {name}: {v}" for v in unknown_env(compose_env(svc))]
    for d, pod, c, df, env in our_k8s_containers():
        names = [e["name"] for e in c.get("env", [])]
        bad += [f"{d['kind']}/{d['metadata']['name']} {c['name']}: {v}"
                for v in unknown_env(names, expansion_only(c))]
    for cm in k8s_find("ConfigMap", "socklb-config"):
        bad += [f"ConfigMap socklb-config: {v}" for v in unknown_env(cm["data"])]
    for df_path in built_images().values():
        bad += [f"{df_path.name}: {v}" for v in unknown_env(set(dockerfile(df_path)["env"]) - IMAGE_ENV)]
    assert not bad, "variables nothing reads:\n" + "\n".join(bad)


# === ports and addresses: compose ======================================================================

def _etcd_client_ports(argv: list[str]) -> set[int]:
    return {urlsplit(u).port for v in flag_values(argv, "--listen-client-urls") for u in v.split(",")}


@COMPOSE_VARIANTS
def test_compose_ports_and_addresses_agree(variant):
    c = compose(variant)
    services = c["services"]
    progs = compose_programs(variant)
    cps = progs["socklb-controlplane"]
    assert len(cps) == 2, "two control-plane replicas"
    assert len({ns.replica_id for _, ns, _ in cps}) == 2 and all(ns.replica_id for _, ns, _ in cps)
    listen_ports = {}
    for name, ns, svc in cps:
        host, port = hostport(ns.listen)
        assert host in ("0.0.0.0", "::"), f"{name}: --listen {ns.listen} is not reachable from other containers"
        listen_ports[name] = port
        hc = parse_argv(healthcheck_argv(svc))[1]
        assert hostport(hc.server) == ("127.0.0.1", port), f"{name}: healthcheck {hc.server} vs --listen {ns.listen}"
        assert port in {cport for _, _, cport in published(svc)}, f"{name}: port {port} is not published"
        # --store: etcd's client port, by service name
        assert ns.store.startswith("etcd://"), ns.store
        for ep in ns.store[len("etcd://"):].split("?")[0].split(","):
            h, p = hostport(ep)
            assert h in services, f"{name}: --store host {h} is not a service"
            assert p in _etcd_client_ports(as_list(services[h]["command"])), f"{name}: --store port {p}"
    assert len(set(listen_ports.values())) == 2, "the replicas listen on distinct ports"
    for name, ns, svc in cps:  # /metrics, when served, is published too
        if getattr(ns, "metrics_listen", ""):
            host, port = hostport(ns.metrics_listen)
            assert host in ("0.0.0.0", "::") and port in {cport for _, _, cport in published(svc)}, \
                f"{name}: --metrics-listen {ns.metrics_listen} is not published"

    # The dataplane (host network) reaches every replica through its published port.
    [(dp_name, dp, dp_svc)] = progs["socklb-dataplane"]
    assert dp_svc.get("network_mode") == "host"
    reach = {}
    for name, svc in services.items():
        for ip, hport, cport in published(svc):
            # Every published port stays on the machine (base: nothing
            # authenticates callers; mtls: the same exposure, plus mTLS).
            assert ip == "127.0.0.1", f"{name}: port {hport} is published on {ip}"
            reach[hport] = (name, cport, ip)
    listed = set()
    for addr in dp.controlplane.split(","):
        h, p = hostport(addr.strip())
        assert h in ("127.0.0.1", "localhost"), addr
        assert p in reach, f"--controlplane {addr}: no service publishes host port {p}"
        name, cport, _ = reach[p]
        assert listen_ports.get(name) == cport, f"--controlplane {addr} reaches {name}:{cport}, not its --listen"
        listed.add(name)
    assert listed == set(listen_ports), f"--controlplane lists {sorted(listed)}, not every replica"
    # What the host-network dataplane listens on must not be a port another
    # service publishes on the host.
    if getattr(dp, "metrics_listen", ""):
        host, port = hostport(dp.metrics_listen)
        assert port not in reach, f"dataplane --metrics-listen {dp.metrics_listen}: host port taken by {reach[port][0]}"


def test_compose_otlp_endpoints_reach_jaeger():
    services = compose()["services"]
    jaeger = [n for n, s in services.items() if str(s.get("image", "")).split(":")[0].endswith("jaegertracing/jaeger")]
    assert len(jaeger) == 1, "one Jaeger v2 (jaegertracing/jaeger) service"
    j = services[jaeger[0]]
    tag = str(j["image"]).rsplit(":", 1)[1]
    assert int(tag.split(".")[0]) >= 2, "Jaeger v1 is end of life: use v2"
    host_ports = {hport: cport for _, hport, cport in published(j)}
    assert 16686 in host_ports.values(), "the Jaeger UI is published"
    for name, svc, df, env in our_compose_services():
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        assert endpoint, f"{name}: no OTEL_EXPORTER_OTLP_ENDPOINT"
        assert env.get("OTEL_SERVICE_NAME"), f"{name}: no OTEL_SERVICE_NAME"
        want = JAEGER_OTLP_PORTS[env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]
        u = urlsplit(endpoint)
        if svc.get("network_mode") == "host":
            assert u.hostname in ("127.0.0.1", "localhost") and host_ports.get(u.port) == want, (name, endpoint)
        else:
            assert u.hostname == jaeger[0] and u.port == want, (name, endpoint)


@COMPOSE_VARIANTS
def test_compose_dependencies_and_volumes_are_declared(variant):
    c = compose(variant)
    for name, svc in c["services"].items():
        deps = svc.get("depends_on") or {}
        for dep in deps:
            assert dep in c["services"], f"{name} depends on unknown {dep}"
        for v in svc.get("volumes") or []:
            src = v.get("source") if isinstance(v, dict) else str(v).split(":")[0]
            kind = v.get("type") if isinstance(v, dict) else ("bind" if src.startswith(("/", ".")) else "volume")
            if kind == "volume":
                assert src in (c.get("volumes") or {}), f"{name}: volume {src} is not declared"


# === ports and addresses: Kubernetes =====================================================================

def _service_for(host: str, port: int) -> tuple[dict, dict]:
    """The Service a NAME[.NAMESPACE[.svc...]]:PORT address designates, and its port."""
    parts = host.split(".")
    svcs = k8s_find("Service", parts[0])
    assert svcs, f"{host}: no Service {parts[0]} in deploy/k8s"
    svc = svcs[0]
    if len(parts) > 1:
        assert parts[1] == svc["metadata"]["namespace"], f"{host}: Service {parts[0]} is in another namespace"
    ports = [p for p in svc["spec"]["ports"] if p["port"] == port]
    assert ports, f"{host}:{port}: Service {parts[0]} has no port {port}"
    return svc, ports[0]


def _pods_of(svc: dict) -> list[tuple[dict, dict]]:
    sel = svc["spec"]["selector"]
    return [(d, c) for d, pod, c in k8s_containers()
            if sel.items() <= d["spec"]["template"]["metadata"]["labels"].items()]


def test_k8s_ports_and_addresses_agree():
    progs = k8s_programs()
    [(cp_deploy, cp_pod, cp_c, cp)] = progs["socklb-controlplane"]
    assert cp_deploy["kind"] == "Deployment" and cp_deploy["spec"]["replicas"] == 2
    host, port = hostport(cp.listen)
    assert host in ("0.0.0.0", "::"), f"--listen {cp.listen}: not reachable from the Service"
    assert port in [p["containerPort"] for p in cp_c["ports"]]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = cp_c[probe]
        assert "tcpSocket" in p or "grpc" in p, probe
        assert container_port(cp_c, (p.get("tcpSocket") or p["grpc"])["port"]) == port, probe
        if "grpc" in p:
            assert serves_grpc_health(), f"{probe}: a gRPC probe, but socklb/ serves no grpc.health.v1"
            assert not getattr(cp, "tls_cert", ""), "the kubelet's gRPC probe speaks no TLS"
    # /metrics, when served: a declared port, and the one the scrape annotation names.
    for d, pod, c, ns in progs["socklb-controlplane"] + progs["socklb-dataplane"]:
        if getattr(ns, "metrics_listen", ""):
            host, mport = hostport(ns.metrics_listen)
            assert host in ("0.0.0.0", "::"), f"{c['name']}: --metrics-listen {ns.metrics_listen} is not scrapable"
            assert mport in [p["containerPort"] for p in c.get("ports", [])], f"{c['name']}: port {mport}"
            ann = d["spec"]["template"]["metadata"].get("annotations", {})
            assert ann.get("prometheus.io/port", str(mport)) == str(mport), c["name"]
    assert cp_c["env"] and any(e["name"] == "SOCKLB_REPLICA_ID" and "fieldRef" in e.get("valueFrom", {})
                                for e in cp_c["env"]), "each replica is named after its pod"
    # The dataplane's --controlplane is the control plane's Service, whose port targets --listen.
    [(ds, ds_pod, ds_c, dp)] = progs["socklb-dataplane"]
    for addr in dp.controlplane.split(","):
        h, p = hostport(addr.strip())
        svc, sport = _service_for(h, p)
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
        pods = _pods_of(svc)
        assert (cp_deploy, cp_c) in pods, f"{addr}: Service {svc['metadata']['name']} does not select the control plane"
        assert container_port(cp_c, sport.get("targetPort", sport["port"])) == port
    # --store: the etcd Service's client port, which etcd listens on.
    assert cp.store.startswith("etcd://"), cp.store
    for ep in cp.store[len("etcd://"):].split("?")[0].split(","):
        h, p = hostport(ep)
        svc, sport = _service_for(h, p)
        [(sts, etcd_c)] = _pods_of(svc)
        target = container_port(etcd_c, sport.get("targetPort", sport["port"]))
        assert target in _etcd_client_ports(as_list(etcd_c.get("command")) + as_list(etcd_c.get("args")))


def test_k8s_references_resolve():
    docs = k8s_docs()
    ns = [d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"]
    assert ns == ["socklb"]
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == "socklb", f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] in WORKLOADS:
            tmpl = d["spec"]["template"]
            if d["kind"] != "Job":
                assert d["spec"]["selector"]["matchLabels"].items() <= tmpl["metadata"]["labels"].items()
            sa = tmpl["spec"].get("serviceAccountName")
            if sa:
                assert k8s_find("ServiceAccount", sa), f"{d['metadata']['name']}: no ServiceAccount {sa}"
        if d["kind"] == "Service":
            assert _pods_of(d), f"Service {d['metadata']['name']} selects no pod"
        if d["kind"] == "RoleBinding":
            assert k8s_find(d["roleRef"]["kind"], d["roleRef"]["name"])
            for s in d["subjects"]:
                assert k8s_find(s["kind"], s["name"]), s
        if d["kind"] == "Role":
            for rule in d["rules"]:
                if rule["resources"] == ["secrets"]:
                    # Only the certs Job's: it reads socklb's Secrets and creates them.
                    assert d["metadata"]["name"] == "socklb-certs", d["metadata"]["name"]
                    assert set(rule["verbs"]) in ({"get"}, {"create"}), rule
                    if rule["verbs"] == ["get"]:
                        assert set(rule["resourceNames"]) == set(certs_made()), rule
                    continue
                assert set(rule["verbs"]) <= {"get", "list", "watch"}, "read-only"
                for n in rule.get("resourceNames", []):
                    assert k8s_find("ConfigMap", n), n
    for d, _, c in k8s_containers():
        env = k8s_env(c)  # every ConfigMap key referenced exists
        # Every $(VAR) names a variable defined before it (the kubelet leaves
        # an unknown one as it is).
        texts = list(env.values()) + [expand(a, env) for a in as_list(c.get("command")) + as_list(c.get("args"))]
        left = sorted({m for t in texts for m in _EXPANSION.findall(t)})
        assert not left, f"{d['kind']}/{d['metadata']['name']} {c['name']}: undefined $(...) {left}"


# === the dataplane's privileges and mounts ===================================================================

def test_compose_dataplane_sees_the_host():
    [(name, dp, svc)] = compose_programs()["socklb-dataplane"]
    assert svc.get("privileged") is True
    assert svc.get("network_mode") == "host"
    assert svc.get("pid") == "host"
    assert svc.get("cgroup") == "host"
    mounts = {}
    for v in svc["volumes"]:
        if isinstance(v, dict) and v["type"] == "bind":
            mounts[v["source"]] = v
    for src, (target, ro) in DATAPLANE_HOST_PATHS.items():
        assert src in mounts, f"host {src} is not mounted"
        assert mounts[src]["target"] == target, src
        if ro is not None:
            assert bool(mounts[src].get("read_only", False)) == ro, src
    assert mounts["/sys/fs/bpf"]["bind"]["propagation"] == "rshared"
    assert mounts["/run/netns"]["bind"]["propagation"] in ("rslave", "slave", "rshared")
    # The pins (--pin-dir, default from the code) land in the host's bpffs.
    assert Path(dp.pin_dir).is_relative_to("/sys/fs/bpf")


def test_k8s_dataplane_sees_the_host():
    [(ds, pod, c, dp)] = k8s_programs()["socklb-dataplane"]
    assert ds["kind"] == "DaemonSet"
    assert pod["hostNetwork"] is True and pod["hostPID"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod.get("tolerations"), "runs on tainted nodes too"
    assert c["securityContext"]["privileged"] is True
    assert "command" not in c, "the image's entrypoint (kernel headers) must run"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {volumes[m["name"]]["hostPath"]["path"]: m for m in c["volumeMounts"]
              if "hostPath" in volumes[m["name"]]}
    for src, (target, ro) in DATAPLANE_HOST_PATHS.items():
        assert src in mounts, f"host {src} is not mounted"
        assert mounts[src]["mountPath"] == target, src
        if ro is not None:
            assert bool(mounts[src].get("readOnly", False)) == ro, src
    assert mounts["/sys/fs/bpf"]["mountPropagation"] == "Bidirectional"
    assert mounts["/run/netns"]["mountPropagation"] == "HostToContainer"
    assert Path(dp.pin_dir).is_relative_to("/sys/fs/bpf")
    assert dp.node == "<spec.nodeName>", "--node is the Kubernetes node name"


# === images ===================================================================================================

def _setup_apt_packages() -> set[str]:
    m = re.search(r"APT_PACKAGES=\((.*?)\)", (REPO / "scripts" / "setup.sh").read_text(), re.S)
    return set(m[1].split())


def _apt_installed(df: dict) -> set[str]:
    pkgs = set()
    for run in df["run"]:
        for m in re.finditer(r"apt-get install ((?:[^&;|]|\\\n)*)", run):
            pkgs |= {w for w in m[1].split() if not w.startswith("-")}
    return pkgs


def test_images_are_debian_bookworm_and_install_the_project_from_the_repo():
    images = built_images()
    assert {p.name for p in images.values()} == {"Dockerfile.controlplane", "Dockerfile.dataplane"}
    for path in images.values():
        assert path.parent == DEPLOY and path.exists()
        df = dockerfile(path)
        assert df["from"] and all(f.startswith("debian:bookworm") for f in df["from"]), df["from"]
        first = df["stages"][0]
        assert first["copy"][0] == [".", "/src"], "COPY . /src"
        assert any("-m venv /opt/socklb" in r and "/usr/bin/python3" in r for r in first["run"])
        assert any(re.search(r"/opt/socklb/bin/pip install .*/src\b", r) for r in first["run"])
        ignore = path.with_name(path.name + ".dockerignore").read_text().split()
        assert {".git", ".venv"} <= set(ignore)
        prog = (df["entrypoint"] or [None])[0]
        cmd = strip_wrapper((df["entrypoint"] or []) + (df["cmd"] or []))
        parse_argv(cmd, df["env"])  # the image's default command
        assert prog in (None, ENTRYPOINT_WRAPPER)


def test_dataplane_image_has_bcc_clang_libbpf_and_headers():
    df = dockerfile(DEPLOY / "Dockerfile.dataplane")
    installed = _apt_installed(df)
    assert DATAPLANE_APT <= installed, f"missing: {sorted(DATAPLANE_APT - installed)}"
    assert DATAPLANE_APT - {"python3"} <= _setup_apt_packages(), "the same packages as scripts/setup.sh"
    assert any("ln -sfn /usr/lib/python3/dist-packages/bcc" in r for r in df["run"]), "the venv sees bcc"
    assert df["entrypoint"] == [ENTRYPOINT_WRAPPER]
    assert ["deploy/dataplane-entrypoint.sh", ENTRYPOINT_WRAPPER] in df["copy"]
    assert os.access(ENTRYPOINT_SCRIPT, os.X_OK)


# === the dataplane entrypoint (kernel headers for bcc) =========================================================

def _run_entrypoint(root: Path, *cmd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SOCKLB_ENTRYPOINT_ROOT=str(root))
    return subprocess.run(["sh", str(ENTRYPOINT_SCRIPT), *cmd], env=env, capture_output=True, text=True,
                          timeout=30)


def test_entrypoint_links_the_hosts_headers(tmp_path):
    release = os.uname().release
    # The host: Debian-style split headers, absolute symlinks (host paths).
    for d in (f"usr/src/linux-headers-{release}/include", f"usr/src/linux-headers-{release}-common/include"):
        (tmp_path / "host" / d).mkdir(parents=True)
    hmod = tmp_path / "host" / "lib" / "modules" / release
    hmod.mkdir(parents=True)
    (hmod / "build").symlink_to(f"/usr/src/linux-headers-{release}")
    (hmod / "source").symlink_to(f"/usr/src/linux-headers-{release}-common")
    # The image's fallback headers, which must not be used here.
    (tmp_path / "usr/src/linux-headers-6.1.0-99-amd64/include").mkdir(parents=True)
    r = _run_entrypoint(tmp_path, "printf", "%s|", "socklb-dataplane", "run", "a b")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "socklb-dataplane|run|a b|", "the command is exec'd with its arguments intact"
    kdir = tmp_path / "lib" / "modules" / release
    assert (kdir / "build").resolve() == (tmp_path / f"host/usr/src/linux-headers-{release}").resolve()
    assert (kdir / "source").resolve() == (tmp_path / f"host/usr/src/linux-headers-{release}-common").resolve()
    # A second start leaves them as they are.
    assert _run_entrypoint(tmp_path, "true").returncode == 0
    assert (kdir / "build" / "include").is_dir()


def test_entrypoint_falls_back_to_the_images_debian_headers(tmp_path):
    release = os.uname().release
    (tmp_path / "host" / "lib" / "modules").mkdir(parents=True)  # a host kernel without headers
    (tmp_path / "host" / "usr" / "src").mkdir(parents=True)
    for v in ("6.1.0-9", "6.1.0-12"):
        (tmp_path / f"usr/src/linux-headers-{v}-amd64/include").mkdir(parents=True)
        (tmp_path / f"usr/src/linux-headers-{v}-common/include").mkdir(parents=True)
    r = _run_entrypoint(tmp_path, "true")
    assert r.returncode == 0, r.stderr
    kdir = tmp_path / "lib" / "modules" / release
    assert os.readlink(kdir / "build") == str(tmp_path / "usr/src/linux-headers-6.1.0-12-amd64")  # the newest
    assert os.readlink(kdir / "source") == str(tmp_path / "usr/src/linux-headers-6.1.0-12-common")
    assert "no headers on the host" in r.stderr


def test_entrypoint_without_any_headers_still_runs_the_command(tmp_path):
    r = _run_entrypoint(tmp_path, "echo", "ran")
    assert r.returncode == 0 and r.stdout == "ran\n", r.stderr
    assert "kheaders" in r.stderr


# === the compose control planes, run for real on a local etcd ===================================================

def _replace(argv: list[str], old: str, new: str) -> list[str]:
    return [new if t == old else (t[: -len(old)] + new if t.endswith("=" + old) else t) for t in argv]


def _program(argv: list[str]) -> list[str]:
    """Run a console script from this interpreter's environment (the venv)."""
    script = Path(sys.executable).parent / argv[0]
    if script.exists():
        return [str(script), *argv[1:]]
    module = {"socklb": "socklb.cli", "socklb-controlplane": "socklb.controlplane.server",
              "socklb-dataplane": "socklb.dataplane.cli", "socklb-certs": "socklb.certs"}[argv[0]]
    return [sys.executable, "-m", module, *argv[1:]]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _until(fn, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        r = fn()
        if r.returncode == 0 or time.monotonic() > deadline:
            return r
        time.sleep(0.3)


def _certs_mount(variant: str) -> str | None:
    """Where the mtls variant mounts the certificates volume (None: base)."""
    if variant != "mtls":
        return None
    [target] = {str(v).split(":")[1] for v in compose(variant)["services"]["certs"]["volumes"]}
    return target


@COMPOSE_VARIANTS
def test_compose_control_planes_run_on_etcd(tmp_path, variant):
    """The nearest thing to `docker compose up` here: etcd started with the
    compose file's flags, both control-plane replicas with their compose
    commands (addresses moved to free loopback ports), their healthchecks
    passing, and one replica seeing what was written through the other.
    mtls: the certs service's command makes the certificates first (the
    volume is a directory here), and callers without the right certificate
    are refused by the control planes and by etcd."""
    need(os.path.isfile(ETCD) and os.access(ETCD, os.X_OK),
         f"etcd not found at {ETCD} (Debian package etcd-server; scripts/setup.sh installs it)")
    services = compose(variant)["services"]
    mount = _certs_mount(variant)
    certs_dir = tmp_path / "certs"

    def local(argv: list[str]) -> list[str]:
        return [t.replace(mount, str(certs_dir)) for t in argv] if mount else argv

    etcd_argv = as_list(services["etcd"]["command"])
    [client_url] = flag_values(etcd_argv, "--listen-client-urls")
    [peer_url] = flag_values(etcd_argv, "--listen-peer-urls")
    client, peer, *cp_ports = free_ports(6)
    argv = []
    for tok in etcd_argv[1:]:
        tok = re.sub(rf"://[^/:,]+:{urlsplit(client_url).port}\b", f"://127.0.0.1:{client}", tok)
        tok = re.sub(rf"://[^/:,]+:{urlsplit(peer_url).port}\b", f"://127.0.0.1:{peer}", tok)
        if tok.startswith("--data-dir"):
            tok = f"--data-dir={tmp_path / 'etcd'}"
        argv.append(tok)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SOCKLB_"))}
    env.update(OTEL_SDK_DISABLED="true", OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none",
               PYTHONUNBUFFERED="1")
    procs: list[subprocess.Popen] = []
    logs = []

    def start(cmd, name):
        log = open(tmp_path / f"{name}.log", "wb")
        logs.append(log)
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env=env, cwd=str(tmp_path), start_new_session=True))

    def logs_text():
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in tmp_path.glob("*.log"))

    def run(cmd):
        return subprocess.run(_program(cmd), capture_output=True, text=True, env=env, timeout=30)

    try:
        if mount:
            [(_, _, certs_svc)] = compose_programs(variant)["socklb-certs"]
            made = run(local(compose_argv(certs_svc, dockerfile(built_images()[certs_svc["image"]]))))
            assert made.returncode == 0, made.stderr
        start(local([ETCD, *argv]), "etcd")
        health, metrics_urls = [], []
        for (name, ns, svc), port, mport in zip(compose_programs(variant)["socklb-controlplane"], cp_ports[:2],
                                                cp_ports[2:]):
            cmd = compose_argv(svc, dockerfile(built_images()[svc["image"]]))
            cmd = _replace(cmd, ns.listen, f"127.0.0.1:{port}")
            cmd = [re.sub(r"^(--store=etcd://)[^?]*", rf"\g<1>127.0.0.1:{client}", t) for t in cmd]
            if getattr(ns, "metrics_listen", ""):
                cmd = _replace(cmd, ns.metrics_listen, f"127.0.0.1:{mport}")
            assert not [t for t in cmd if "0.0.0.0" in t], f"{name}: still binds every address: {cmd}"
            start(_program(local(cmd)), name)
            hc = _replace(healthcheck_argv(svc), f"127.0.0.1:{hostport(ns.listen)[1]}", f"127.0.0.1:{port}")
            assert hc != healthcheck_argv(svc)
            health.append((name, local(hc), port))
            if getattr(ns, "metrics_listen", ""):
                metrics_urls.append((name, f"http://127.0.0.1:{mport}/metrics"))
        for name, hc, _ in health:
            r = _until(lambda: run(hc), 60)
            assert r.returncode == 0, f"{name}: healthcheck {hc} failed: {r.stderr}\n{logs_text()}"
        for name, url in metrics_urls:
            with urllib.request.urlopen(url, timeout=10) as r:
                assert b"socklb_" in r.read(), f"{name}: {url} serves no socklb metric"
        (a, _, pa), (b, _, pb) = health

        def creds(who: str) -> list[str]:
            if not mount:
                return []
            d = certs_dir / f"socklb-{who}-tls"
            return [f"--tls-ca={d / 'ca.crt'}", f"--tls-cert={d / 'tls.crt'}", f"--tls-key={d / 'tls.key'}"]

        web = ["service", "put", "-f", str(REPO / "examples" / "web.yaml")]
        if mount:
            # Refused: no client certificate; a read-only one; a node's.
            for who, want in ((None, "UNAVAILABLE"), ("viewer", "PERMISSION_DENIED"), ("node", "PERMISSION_DENIED")):
                extra = creds(who) if who else [f"--tls-ca={certs_dir / 'socklb-ca' / 'ca.crt'}"]
                r = run(["socklb", f"--server=127.0.0.1:{pa}", "--timeout=5", *extra, *web])
                assert r.returncode != 0 and want in r.stderr, (who, r.stderr)
            # etcd takes no client without a certificate of the CA.
            from socklb.controlplane.store import StoreError, open_store
            bare = open_store(f"etcd://127.0.0.1:{client}?timeout=3&ca={certs_dir / 'socklb-ca' / 'ca.crt'}")
            try:
                with pytest.raises(StoreError):
                    bare.get("/socklb/")
            finally:
                bare.close()
        put = run(["socklb", f"--server=127.0.0.1:{pa}", *creds("admin"), *web])
        assert put.returncode == 0, put.stderr
        name = yaml.safe_load((REPO / "examples" / "web.yaml").read_text())["name"]
        got = _until(lambda: run(["socklb", f"--server=127.0.0.1:{pb}", *creds("viewer"), "-o", "json", "service",
                                  "get", name]), 30)
        assert got.returncode == 0, f"{b} does not see what {a} stored: {got.stderr}\n{logs_text()}"
    finally:
        _stop(procs)
        for log in logs:
            log.close()


# === secure by default ====================================================================================

@functools.cache
def certs_made() -> dict[str, set[str]]:
    """What `socklb-certs` creates (run for real into a directory): secret -> keys."""
    import tempfile
    from socklb import certs
    with tempfile.TemporaryDirectory() as d:
        certs.ensure(certs.DirSecrets(d))
        store = certs.DirSecrets(d)
        return {p.name: set(store.get(p.name)) for p in Path(d).iterdir() if not p.name.startswith(".")}


def _cn(pem: bytes) -> str:
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    return x509.load_pem_x509_certificate(pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def _mounted_secret(pod: dict, container: dict, path: str) -> tuple[str, str]:
    """(Secret, key) behind a file path of a container."""
    for m in container.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/") + "/"
        if path.startswith(mp):
            [vol] = [v for v in pod["volumes"] if v["name"] == m["name"]]
            assert "secret" in vol, f"{path}: volume {m['name']} is not a Secret"
            return vol["secret"]["secretName"], path[len(mp):]
    raise AssertionError(f"{path}: not under any volume of {container['name']}")


def _pod_matches(selector: dict, labels: dict) -> bool:
    return selector.get("matchLabels", {}).items() <= labels.items() and not selector.get("matchExpressions")


def test_k8s_is_secure_by_default():
    made = certs_made()

    def from_secret(pod, c, path, secret):
        name, key = _mounted_secret(pod, c, path)
        assert name == secret and key in made[secret], f"{c['name']}: {path} is {name}/{key}, not from {secret}"

    progs = k8s_programs()
    # The control plane: TLS, client certificates required, a clients file; nothing unauthenticated.
    [(cp_deploy, cp_pod, cp_c, cp)] = progs["socklb-controlplane"]
    assert not cp.allow_unauthenticated
    for path in (cp.tls_cert, cp.tls_key, cp.tls_client_ca):
        from_secret(cp_pod, cp_c, path, "socklb-controlplane-tls")
    from_secret(cp_pod, cp_c, cp.clients_file, "socklb-clients")
    # ... and its store over TLS with a client certificate.
    q = {k: v[-1] for k, v in parse_qs(urlsplit(cp.store).query).items()}
    for k in ("ca", "cert", "key"):
        from_secret(cp_pod, cp_c, q[k], "socklb-controlplane-tls")
    # Nodes authenticate with the node certificate, whose CN the clients file makes a node (and only that).
    [(ds, dp_pod, dp_c, dp)] = progs["socklb-dataplane"]
    for path in (dp.tls_ca, dp.tls_cert, dp.tls_key):
        from_secret(dp_pod, dp_c, path, "socklb-node-tls")
    import tempfile
    from socklb import certs
    from socklb.controlplane import auth
    with tempfile.TemporaryDirectory() as d:
        certs.ensure(certs.DirSecrets(d))
        clients = auth.Clients.load(Path(d) / "socklb-clients" / "clients.yaml")
        node = clients.by_cn[_cn((Path(d) / "socklb-node-tls" / "tls.crt").read_bytes())]
        assert node.role == "node"
        assert not clients.by_token, "no token is generated: certificates only"
        roles = {_cn((Path(d) / s / "tls.crt").read_bytes()): clients.by_cn.get(_cn((Path(d) / s / "tls.crt")
                                                                                   .read_bytes()))
                 for s in made if s.endswith("-tls")}
        # etcd's and the control plane's own certificates are no callers of the API.
        assert roles["socklb-etcd"] is None and roles["socklb-controlplane"] is None
    # etcd: TLS on both ports, client certificates required, its files from its Secret.
    [(sts, etcd_pod, etcd_c)] = [(d, p, c) for d, p, c in k8s_containers() if "etcd" in c["image"]]
    argv = as_list(etcd_c.get("command")) + as_list(etcd_c.get("args"))
    for flag in ("--listen-client-urls", "--advertise-client-urls", "--listen-peer-urls",
                 "--initial-advertise-peer-urls"):
        urls = [u for v in flag_values(argv, flag) for u in v.split(",")]
        assert urls and all(u.startswith("https://") for u in urls), f"etcd {flag}: {urls}"
    assert "--client-cert-auth" in argv and "--peer-client-cert-auth" in argv
    for flag in ("--cert-file", "--key-file", "--trusted-ca-file", "--peer-cert-file", "--peer-key-file",
                 "--peer-trusted-ca-file"):
        [path] = flag_values(argv, flag)
        from_secret(etcd_pod, etcd_c, path, "socklb-etcd-tls")
    # The CA key stays in its Secret: no pod mounts it.
    for d, pod, c in k8s_containers():
        assert "socklb-ca" not in {v.get("secret", {}).get("secretName") for v in pod.get("volumes", [])}, d
    # The Job that makes them runs socklb-certs kubernetes in this namespace.
    [(job, job_pod, job_c, job_ns)] = progs["socklb-certs"]
    assert job["kind"] == "Job" and job_ns.cmd == "kubernetes" and job_ns.namespace == "<metadata.namespace>"
    assert job_pod.get("automountServiceAccountToken") is True and job_pod["serviceAccountName"] == "socklb-certs"
    # NetworkPolicy: ingress denied by default; etcd's client port only from the control plane.
    policies = k8s_find("NetworkPolicy")
    assert any(p["spec"]["podSelector"] == {} and p["spec"]["policyTypes"] == ["Ingress"]
               and not p["spec"].get("ingress") for p in policies), "no default-deny ingress policy"
    etcd_labels = sts["spec"]["template"]["metadata"]["labels"]
    cp_labels = cp_deploy["spec"]["template"]["metadata"]["labels"]
    client_port = container_port(etcd_c, "client")
    admitted = []
    for p in policies:
        if not _pod_matches(p["spec"]["podSelector"], etcd_labels):
            continue
        for rule in p["spec"].get("ingress", []):
            ports = [container_port(etcd_c, x["port"]) for x in rule.get("ports", [])]
            if not ports or client_port in ports:
                admitted.append(rule.get("from"))
    assert admitted, "etcd's client port is admitted from nowhere"
    for sources in admitted:
        assert sources, "etcd's client port is admitted from everywhere"
        for src in sources:
            assert set(src) == {"podSelector"} and _pod_matches(src["podSelector"], cp_labels) \
                and not _pod_matches(src["podSelector"], dp_pod and ds["spec"]["template"]["metadata"]["labels"]), \
                f"etcd's client port admits {src}"


def test_compose_mtls_variant_authenticates_everything():
    made = certs_made()
    mount = _certs_mount("mtls")

    def from_secret(path: str, secret: str) -> None:
        rel = Path(path).relative_to(mount)
        assert rel.parts[0] == secret and rel.parts[1] in made[secret], f"{path}: not a file of {secret}"

    progs = compose_programs("mtls")
    for name, cp, svc in progs["socklb-controlplane"]:
        assert not cp.allow_unauthenticated, name
        for path in (cp.tls_cert, cp.tls_key, cp.tls_client_ca):
            from_secret(path, "socklb-controlplane-tls")
        from_secret(cp.clients_file, "socklb-clients")
        q = {k: v[-1] for k, v in parse_qs(urlsplit(cp.store).query).items()}
        for k in ("ca", "cert", "key"):
            from_secret(q[k], "socklb-controlplane-tls")
    [(name, dp, svc)] = progs["socklb-dataplane"]
    for path in (dp.tls_ca, dp.tls_cert, dp.tls_key):
        from_secret(path, "socklb-node-tls")
    argv = as_list(compose("mtls")["services"]["etcd"]["command"])
    assert "--client-cert-auth" in argv and all(
        u.startswith("https://") for u in flag_values(argv, "--listen-client-urls"))
    # The base file stays what it says: unauthenticated, so on loopback only (checked by the ports test).
    assert all(cp.allow_unauthenticated for _, cp, _ in compose_programs("base")["socklb-controlplane"])
