# The two commands of the README: `make run` and `make test`. Both set the
# machine up first (idempotent), so they work on a fresh Debian machine as root.
PY := .venv/bin/python
STATE ?= examples/standalone.yaml

.PHONY: setup run standalone test unit layers kernel fuzz reliability proto proto-check bench clean

setup:
	@./scripts/setup.sh

run: setup
	./scripts/run.sh

standalone: setup
	$(PY) -m socklb.dataplane.cli run --state $(STATE)

test: setup proto-check
	$(PY) -m pytest -v -p no:cacheprovider tests

unit: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

# The layering contracts of pyproject.toml (also checked by tests/unit/test_layering.py).
layers: setup
	.venv/bin/lint-imports --no-cache

# The API fuzzing of `make test`, with many more cases (about 60k).
fuzz: setup
	SOCKLB_FUZZ_EXAMPLES=$${SOCKLB_FUZZ_EXAMPLES:-5000} $(PY) -m pytest -q -p no:cacheprovider tests/unit/test_api_fuzz.py

# The reliability probes with figures -> docs/reliability.md.
reliability: setup
	$(PY) scripts/reliability.py

kernel: setup
	$(PY) -m pytest -v -p no:cacheprovider tests/kernel

proto: setup
	./scripts/genproto.sh

proto-check:
	./scripts/genproto.sh --check

bench: setup
	$(PY) -m bench.datapath
