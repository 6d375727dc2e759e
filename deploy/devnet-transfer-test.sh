#!/usr/bin/env bash
# Issue [D]'s devnet check: an 8-node devnet holding OBJECTS objects (10,000 by
# default) gets 4 nodes added (`dbqs-server devnet add-node`) and 2 removed
# (`dbqs admin remove`) while a writer runs; afterwards every object must be readable
# and every node must hold exactly the objects of the ranges it serves in the final
# ring (from `dbqs status --json`). Prints how long the transfers took and the
# writer's throughput before and during the changes. Release binaries; bounded.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tdir=${CARGO_TARGET_DIR:-$root/target}
objects=${OBJECTS:-10000}
# Seconds the writer runs alone, and from the first membership change on.
before_s=${WRITER_BEFORE_S:-10}
during_s=${WRITER_DURING_S:-60}
port=${DBQS_TRANSFER_PORT:-7900}
epoch_ms=3000
work=$(mktemp -d)
devnet_pid=
writer_pid=
cleanup() {
  local rc=$?
  [ -n "$writer_pid" ] && kill "$writer_pid" 2>/dev/null || true
  [ -n "$devnet_pid" ] && kill "$devnet_pid" 2>/dev/null && wait "$devnet_pid" 2>/dev/null || true
  if [ $rc != 0 ]; then
    # Keep the node logs of a failed run.
    mkdir -p "$root/target/transfer-test-logs"
    find "$work/dn" -name node.log | while read -r f; do
      cp "$f" "$root/target/transfer-test-logs/$(basename "$(dirname "$f")").log"
    done
    echo "node logs kept in target/transfer-test-logs"
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

cargo build -q --release -p dbqs-server -p dbqs-client
server="$tdir/release/dbqs-server"
dbqs="$tdir/release/dbqs"
"$server" devnet --dir "$work/dn" --base-port "$port" --processes --epoch-ms "$epoch_ms" >"$work/devnet.log" 2>&1 &
devnet_pid=$!
for _ in $(seq 1 300); do
  grep -q "serving; Ctrl-C" "$work/devnet.log" 2>/dev/null && break
  kill -0 "$devnet_pid" 2>/dev/null || { cat "$work/devnet.log"; exit 1; }
  sleep 0.2
done
grep -q "self-check passed" "$work/devnet.log" || { cat "$work/devnet.log"; exit 1; }
cfg="$work/dn/client.toml"
bench() { "$dbqs" --config "$cfg" --json bench "$@"; }
field() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["result"][sys.argv[1]])' "$1"; }

clients=8
per=$(( (objects + clients - 1) / clients ))
echo "writing $((per * clients)) objects"
t0=$SECONDS
bench --op write --clients $clients --keys "$per" --ops "$per" --warmup 0 --prefix obj --duration 600 >"$work/fill.json"
[ "$(field errors <"$work/fill.json")" = 0 ] || { echo "FAILED: writes failed while filling"; cat "$work/fill.json"; exit 1; }
echo "  done in $((SECONDS - t0)) s ($(field ops_per_s <"$work/fill.json" | cut -d. -f1) writes/s with $clients clients)"

# The writer cycles over 200 names, so afterwards every one of them exists.
writer() { bench --op write --clients 1 --keys 200 --ops 1000000 --warmup 0 --prefix w --duration "$1"; }
echo "writer alone for $before_s s"
writer "$before_s" >"$work/before.json"
before=$(field ops_per_s <"$work/before.json")
echo "  $(printf '%.0f' "$before") writes/s, p50 $(field p50_ms <"$work/before.json") ms"

# The writer runs a fixed time from the first change (60 s covers the adds and
# removals, and the transfers run inside that window too).
writer "$during_s" >"$work/during.json" &
writer_pid=$!
t_changes=$SECONDS
for _ in 1 2 3 4; do
  "$server" devnet add-node --dir "$work/dn" --wait-s 60 | sed 's/^/  /'
done
status() { "$dbqs" --config "$cfg" --json status; }
for victim in $(status | python3 -c 'import json,sys; d=json.load(sys.stdin); print(" ".join([m["node"] for m in d["members"] if not m["ms"]][:2]))'); do
  "$dbqs" --config "$cfg" admin remove "$victim" | sed 's/^/  /'
  sleep $(( 2 * epoch_ms / 1000 ))
done
# Wait until no node has ranges left to take over and the removed ones left.
deadline=$((SECONDS + 180))
while :; do
  left=$(status | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(m["status"].get("transfer_pending_ranges", 1) if m["status"]["ok"] else 1 for m in d["members"]))')
  [ "$left" = 0 ] && break
  if [ $SECONDS -ge $deadline ]; then
    echo "FAILED: transfers not finished after 180 s ($left ranges left)"
    "$dbqs" --config "$cfg" status | head -20
    exit 1
  fi
  sleep 1
done
transfer_s=$((SECONDS - t_changes))
echo "membership changes and transfers done in ${transfer_s} s"
wait "$writer_pid"
writer_pid=

echo "reading every object back"
bench --op read --no-prefill --clients $clients --keys "$per" --ops "$per" --warmup 0 --prefix obj --duration 600 >"$work/read.json"
[ "$(field errors <"$work/read.json")" = 0 ] || { echo "FAILED: $(field errors <"$work/read.json") objects not readable"; exit 1; }
echo "  all $((per * clients)) readable ($(field ops_per_s <"$work/read.json" | cut -d. -f1) reads/s)"

# Give lost ranges a few clean-up rounds, then compare each node's object count with
# what the final ring places on it.
sleep 6
status >"$work/status.json"
python3 - "$work/status.json" "$work/dn/client/owner.key" "$clients" "$per" <<'EOF'
import hashlib, json, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
status, key_path, clients, per = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
d = json.load(open(status))
seed = bytes.fromhex(open(key_path).read().strip())
owner = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
names = [f"obj-{k}-{j}" for k in range(clients) for j in range(per)] + [f"w-0-{j}" for j in range(200)]
ring = sorted((bytes.fromhex(m["ring_position"]), m["node"]) for m in d["members"] if m["ring_position"])
n = d["group_size"]
expected = {node: 0 for _, node in ring}
for name in names:
    oid = hashlib.sha256(b"owned" + owner + name.encode()).digest()
    start = next((i for i, (p, _) in enumerate(ring) if p >= oid), 0)
    for k in range(min(n, len(ring))):
        expected[ring[(start + k) % len(ring)][1]] += 1
bad = 0
for m in d["members"]:
    held = m["status"].get("objects")
    want = expected.get(m["node"], 0)
    # The devnet self-check's objects live here too (a handful). A replica may miss a
    # few writes that 2f+1 others acknowledged while epochs changed (quorum writes
    # need not reach every member); more than 0.5% missing is a failure.
    ok = held is not None and want * 0.995 <= held <= want + 4
    bad += not ok
    print(f"  {m['short']}: holds {held}, the ring places {want} here{'' if ok else '  <-- MISMATCH'}")
sys.exit(1 if bad else 0)
EOF
during=$(field ops_per_s <"$work/during.json")
echo "writer: $(printf '%.0f' "$before") writes/s before, $(printf '%.0f' "$during") writes/s during the changes (errors: $(field errors <"$work/during.json"))"
python3 -c 'import json,sys; [print("  writer error:", e) for e in json.load(sys.stdin)["result"]["first_errors"]]' <"$work/during.json"
echo "devnet transfer: ok ($((per * clients)) objects, 4 added, 2 removed, transfers done in ${transfer_s} s)"
