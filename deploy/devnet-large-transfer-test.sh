#!/usr/bin/env bash
# Issue [I]'s devnet check of large objects under membership changes: an 8-node release
# devnet stores one MB-sized file with `dbqs put-blob` (80 MB by default: 80 chunks of
# 1 MiB), then gets 3 nodes added (`dbqs-server devnet add-node`) and 1 removed
# (`dbqs admin remove`). Every range must be taken over (status shows no pending range)
# within 60 s of the last change, and `dbqs get-blob` must return identical bytes.
# Prints how long the upload, the transfers and the download took. Bounded in time.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tdir=${CARGO_TARGET_DIR:-$root/target}
mb=${BLOB_MB:-80}
port=${DBQS_LARGE_TRANSFER_PORT:-8100}
epoch_ms=3000
work=$(mktemp -d)
devnet_pid=
cleanup() {
  local rc=$?
  [ -n "$devnet_pid" ] && kill "$devnet_pid" 2>/dev/null && wait "$devnet_pid" 2>/dev/null || true
  if [ $rc != 0 ]; then
    mkdir -p "$root/target/large-transfer-test-logs"
    find "$work/dn" -name node.log | while read -r f; do
      cp "$f" "$root/target/large-transfer-test-logs/$(basename "$(dirname "$f")").log"
    done
    echo "node logs kept in target/large-transfer-test-logs"
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT
# shellcheck source=deploy/devnet-lib.sh
. "$root/deploy/devnet-lib.sh"

cargo build -q --release -p dbqs-server -p dbqs-client
server="$tdir/release/dbqs-server"
dbqs="$tdir/release/dbqs"
DEVNET_PROFILE=release start_devnet "$work" "$port" --processes --epoch-ms "$epoch_ms"
cfg="$work/dn/client.toml"
status() { "$dbqs" --config "$cfg" --json status; }

head -c "$((mb * 1000 * 1000))" /dev/urandom >"$work/blob"
t0=$SECONDS
id=$(timeout 300 "$dbqs" --config "$cfg" put-blob "$work/blob")
echo "put-blob of $mb MB: $id in $((SECONDS - t0)) s"

for _ in 1 2 3; do
  timeout 120 "$server" devnet add-node --dir "$work/dn" --wait-s 60 | sed 's/^/  /'
done
victim=$(status | python3 -c 'import json,sys; d=json.load(sys.stdin); print([m["node"] for m in d["members"] if not m["ms"]][0])')
timeout 60 "$dbqs" --config "$cfg" admin remove "$victim" | sed 's/^/  /'
t_last=$SECONDS
# The removal takes effect at the next epoch end; then no range may stay pending.
deadline=$((t_last + 60 + 2 * epoch_ms / 1000))
while :; do
  left=$(status | python3 -c '
import json, sys
d = json.load(sys.stdin)
gone = sys.argv[1] in [m["node"] for m in d["members"]]
print(-1 if gone else sum(m["status"].get("transfer_pending_ranges", 1) if m["status"]["ok"] else 1 for m in d["members"]))' "$victim")
  [ "$left" = 0 ] && break
  if [ $SECONDS -ge $deadline ]; then
    echo "FAILED: ranges still pending $((SECONDS - t_last)) s after the last change ($left; -1: the removal not in effect yet)"
    "$dbqs" --config "$cfg" status | head -30
    exit 1
  fi
  sleep 1
done
echo "every range taken over $((SECONDS - t_last)) s after the last change"

t0=$SECONDS
timeout 300 "$dbqs" --config "$cfg" get-blob "$id" --out "$work/back" | sed 's/^/  /'
cmp "$work/blob" "$work/back" || { echo "FAILED: get-blob returned other bytes"; exit 1; }
echo "get-blob: identical $mb MB in $((SECONDS - t0)) s"
echo "devnet large transfer: ok ($mb MB file, 3 added, 1 removed)"
