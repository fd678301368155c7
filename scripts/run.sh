#!/usr/bin/env bash
# `make run`: the control plane on the embedded store and this node's
# dataplane connected to it. Ctrl-C stops both; the BPF programs stay attached
# (the next run adopts them; `socklb-dataplane detach` removes them).
set -euo pipefail
cd "$(dirname "$0")/.."
LISTEN=${SOCKLB_LISTEN:-127.0.0.1:7400}
STORE=${SOCKLB_STORE:-embedded:///var/lib/socklb/controlplane}

.venv/bin/socklb-controlplane --listen "$LISTEN" --store "$STORE" &
cp_pid=$!
trap 'kill $cp_pid 2>/dev/null; wait $cp_pid 2>/dev/null' EXIT
.venv/bin/socklb-dataplane run --controlplane "$LISTEN" "$@"
