"""The layering of socklb holds: the import-linter contracts of pyproject.toml
([tool.importlinter]) are kept by the tree, and the same check fails on a
copy of the tree where a control-plane module imports the dataplane (and the
other ways the contracts forbid)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from importlinter.api import read_configuration

REPO = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).parent / "lint-imports"


def lint(root: Path) -> subprocess.CompletedProcess:
    """lint-imports on the socklb below `root`, with root's pyproject.toml."""
    assert LINT.exists(), f"{LINT} is missing: install the dev extras (pip install -e '.[dev]')"
    # PYTHONPATH: the socklb of `root`, not an installed one (the tool finds the package by import).
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([str(LINT), "--no-cache", "--no-logo"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)


def contracts() -> dict[str, dict]:
    options = read_configuration(str(REPO / "pyproject.toml"))["contracts_options"]
    return {c["id"]: c for c in options}


def test_the_tree_keeps_its_layering_contracts():
    result = lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_contracts_say_what_the_layers_are():
    layers = contracts()["layers"]
    assert layers["type"] == "layers" and layers["containers"] == ["socklb"]
    # Top to bottom; "|": independent siblings (controlplane must not import dataplane, nor the reverse).
    assert layers["layers"] == ["cli | certs", "controlplane | dataplane", "observability | grpcauth", "lb", "v1"]
    assert layers["exhaustive"] in (True, "true", "True")  # a new top-level module must be given a layer


def test_the_check_fails_when_the_planes_or_the_model_cross_their_bounds(tmp_path):
    root = tmp_path / "tree"
    shutil.copytree(REPO / "socklb", root / "socklb", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root)
    violations = {
        "socklb/controlplane/_probe.py": "from socklb.dataplane import layout\n",
        "socklb/dataplane/_probe.py": "import socklb.controlplane.keys\n",
        "socklb/lb/_probe.py": "from socklb.controlplane import compute\n",
    }
    for path, text in violations.items():
        (root / path).write_text(text)
    appended = {
        "socklb/controlplane/store/base.py": "from . import etcd\n",
        "socklb/controlplane/keys.py": "from .store import base\n",
    }
    for path, text in appended.items():
        with (root / path).open("a") as f:
            f.write(text)

    result = lint(root)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "socklb.controlplane is not allowed to import socklb.dataplane" in out
    assert "socklb.controlplane._probe -> socklb.dataplane.layout" in out
    assert "socklb.dataplane is not allowed to import socklb.controlplane" in out
    assert "socklb.dataplane._probe -> socklb.controlplane.keys" in out
    assert "socklb.lb is not allowed to import socklb.controlplane" in out
    assert "socklb.controlplane.store.base -> socklb.controlplane.store.etcd" in out
    assert "socklb.controlplane.keys -> socklb.controlplane.store.base" in out
    assert "0 kept, 3 broken" in out
