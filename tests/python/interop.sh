#!/usr/bin/env bash
# Interop check: a Python client generated from proto/ alone (grpcio) writes and
# reads an owned object against a devnet, and the Rust CLI reads what it wrote
# (and the other way round). Installs what it needs into target/py-venv.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
tdir=${CARGO_TARGET_DIR:-$root/target}
# shellcheck source=deploy/devnet-lib.sh
. "$root/deploy/devnet-lib.sh"
venv=${DBQS_PY_VENV:-$root/target/py-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check grpcio grpcio-tools grpcio-reflection cryptography
gen=$(mktemp -d)
work=$(mktemp -d)
devnet_pid=
cleanup() {
  local rc=$?
  [ -n "$devnet_pid" ] && kill "$devnet_pid" 2>/dev/null && wait "$devnet_pid" 2>/dev/null || true
  rm -rf "$gen" "$work"
  exit $rc
}
trap cleanup EXIT
"$venv/bin/python" -m grpc_tools.protoc -I proto --python_out="$gen" --grpc_python_out="$gen" proto/dbqs/v1/*.proto
touch "$gen/dbqs/__init__.py" "$gen/dbqs/v1/__init__.py"

cargo build -q -p dbqs-server -p dbqs-client
port=${DBQS_INTEROP_PORT:-7600}
start_devnet "$work" "$port" --nodes 4

cfg="$work/dn/client.toml"
value=$(PYTHONPATH="$gen" "$venv/bin/python" tests/python/interop.py "$cfg" py-object)
"$tdir"/debug/dbqs --config "$cfg" get py-object -o "$work/out" >/dev/null
[ "$(cat "$work/out")" = "$value" ] || { echo "Rust client read '$(cat "$work/out")', Python wrote '$value'"; exit 1; }

echo "written by the rust client" >"$work/in"
"$tdir"/debug/dbqs --config "$cfg" put rust-object "$work/in" >/dev/null
got=$(PYTHONPATH="$gen" "$venv/bin/python" tests/python/interop.py "$cfg" rust-object --read-only)
[ "$got" = "$(cat "$work/in")" ] || { echo "Python read '$got'"; exit 1; }
"$venv/bin/python" tests/python/reflection.py "$cfg" >/dev/null
echo "python interop: ok (python -> rust and rust -> python owned objects, with freshness leases from the MS; services listed by reflection)"
