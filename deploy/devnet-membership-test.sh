#!/usr/bin/env bash
# Issue [C]'s devnet check: on a devnet whose nodes run as processes,
# `dbqs-server devnet add-node` of a freshly keyed node and `dbqs admin remove` of
# another show up in `dbqs status` within two epochs, a node killed with -9 is
# evicted (a 3 s eviction threshold here), and once restarted it rejoins by itself with
# its own AddCert (issue 20, defect 9), while the removed node's attempt is refused.
# Bounded: every wait has a deadline. Uses the debug binaries.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tdir=${CARGO_TARGET_DIR:-$root/target}
# shellcheck source=deploy/devnet-lib.sh
. "$root/deploy/devnet-lib.sh"
work=$(mktemp -d)
devnet_pid=
restarted_pid=
cleanup() {
  local rc=$?
  [ -n "$restarted_pid" ] && kill "$restarted_pid" 2>/dev/null || true
  [ -n "$devnet_pid" ] && kill "$devnet_pid" 2>/dev/null && wait "$devnet_pid" 2>/dev/null || true
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

cargo build -q -p dbqs-server -p dbqs-client
port=${DBQS_MEMBERSHIP_PORT:-7800}
epoch_ms=3000
start_devnet "$work" "$port" --processes --epoch-ms "$epoch_ms" --lease-ms 4000 --evict-after-ms 3000
dbqs="$tdir/debug/dbqs"
cfg="$work/dn/client.toml"
status() { "$dbqs" --config "$cfg" --json status; }
# Prints the epoch and the members' addresses, from `dbqs status --json`.
members() { status | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["epoch"], " ".join(sorted(m["address"] for m in d["members"])))'; }
# wait_for SECONDS PYTHON-CONDITION-ON-(epoch, addrs) DESCRIPTION
wait_for() {
  local deadline=$((SECONDS + $1)) cond=$2 what=$3 line=
  while [ $SECONDS -lt "$deadline" ]; do
    line=$(members 2>/dev/null || true)
    if [ -n "$line" ] && python3 -c "import sys; e, *a = sys.argv[1].split(); e = int(e); sys.exit(0 if ($cond) else 1)" "$line"; then
      echo "  $what: epoch ${line%% *} after $(( $1 - (deadline - SECONDS) )) s"
      return 0
    fi
    sleep 0.5
  done
  echo "FAILED: $what within $1 s (last status: $line)"
  exit 1
}

read -r e0 _ <<<"$(members)"
echo "devnet up in epoch $e0 (epochs of $epoch_ms ms)"

echo "add-node"
"$tdir"/debug/dbqs-server devnet add-node --dir "$work/dn" --wait-s 30 | sed 's/^/  /'
new_addr="127.0.0.1:$((port + 9))"
wait_for $(( 2 * epoch_ms / 1000 + 1 )) "'$new_addr' in a" "the new node is a member"

victim=$(status | python3 -c 'import json,sys; d=json.load(sys.stdin); print([m["node"] for m in d["members"] if not m["ms"] and m["address"] != sys.argv[1]][0])' "$new_addr")
victim_addr=$(status | python3 -c 'import json,sys; d=json.load(sys.stdin); print([m["address"] for m in d["members"] if m["node"] == sys.argv[1]][0])' "$victim")
echo "admin remove ${victim:0:8} ($victim_addr)"
"$dbqs" --config "$cfg" admin remove "$victim" | sed 's/^/  /'
# Two epochs (the removal applies when the current one ends) and a second of slack.
wait_for $(( 2 * epoch_ms / 1000 + 1 )) "'$victim_addr' not in a" "the removed node left the configuration"

# Kill -9 a node that is neither an MS member, nor the new one, nor the removed one.
kill_addr=$(status | python3 -c 'import json,sys; d=json.load(sys.stdin); print([m["address"] for m in d["members"] if not m["ms"] and m["address"] not in sys.argv[1:]][0])' "$new_addr" "$victim_addr")
kill_dir="$work/dn/nodes/n$(printf '%02d' $(( ${kill_addr##*:} - port )))"
kill_pid=$(pgrep -f "dbqs-server run --config $kill_dir/node.toml")
echo "kill -9 the node at $kill_addr (pid $kill_pid)"
kill -9 "$kill_pid"
# docs/membership.md, "Eviction bound": evict_after_ms (3 s here; a minute by default),
# one more probe round and one epoch; doubled for a loaded CI machine.
wait_for $(( 2 * (4 + epoch_ms / 1000) )) "'$kill_addr' not in a" "the killed node was evicted"

# Restarted, the evicted node submits its own add.cert and is a member again after the
# next epoch end (docs/membership.md, "Rejoin"): restart, catch-up, one to two epochs.
echo "restart the evicted node"
"$tdir"/debug/dbqs-server run --config "$kill_dir/node.toml" >>"$kill_dir/node.log" 2>&1 </dev/null &
restarted_pid=$!
wait_for $(( 2 * (5 + 2 * epoch_ms / 1000) )) "'$kill_addr' in a" "the evicted node rejoined by itself"
grep -q "the MS queued this node's AddCert" "$kill_dir/node.log" \
  || { echo "FAILED: the rejoined node's log does not show its own AddCert queued"; exit 1; }
# The removed node tried the same and the MS refused it (its AddCert's serial is spent).
victim_dir="$work/dn/nodes/n$(printf '%02d' $(( ${victim_addr##*:} - port )))"
grep -q "the MS refused this node's AddCert" "$victim_dir/node.log" \
  || { echo "FAILED: the removed node's log does not show its rejoin refused"; exit 1; }

# The data path still works for objects whose group did not change (no state transfer
# yet, issue [D]): a fresh object is written and read back.
echo "fresh value" >"$work/in"
"$dbqs" --config "$cfg" put after-changes "$work/in" >/dev/null
"$dbqs" --config "$cfg" get after-changes -o "$work/out" >/dev/null
cmp -s "$work/in" "$work/out" || { echo "FAILED: read back a different value"; exit 1; }
echo "devnet membership: ok (add-node, admin remove, an eviction and the evicted node's rejoin each showed in dbqs status)"
