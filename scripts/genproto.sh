#!/usr/bin/env bash
# Regenerate socklb/v1/*_pb2*.py from proto/. With --check, fail if the
# committed generated code differs from what the protos produce.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
out=socklb/v1
if [ "${1:-}" = "--check" ]; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  "$py" -m grpc_tools.protoc -I proto --python_out="$tmp" --pyi_out="$tmp" --grpc_python_out="$tmp" proto/socklb/v1/*.proto
  if ! diff -r -x __init__.py -x __pycache__ "$tmp/socklb/v1" "$out"; then
    echo "genproto: generated code in $out is stale: run scripts/genproto.sh" >&2
    exit 1
  fi
  exit 0
fi
rm -f "$out"/*_pb2*.py "$out"/*_pb2*.pyi
"$py" -m grpc_tools.protoc -I proto --python_out=. --pyi_out=. --grpc_python_out=. proto/socklb/v1/*.proto
touch "$out/__init__.py"
