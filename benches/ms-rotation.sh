#!/usr/bin/env bash
# How long an MS rotation takes on a release devnet (issue [E]): the devnet starts with
# NODES (default 63) nodes, so its MS has 4 members; one `devnet add-node` brings it to 64,
# where the size rule of PROTOCOL.md asks for 7 members, so the next epoch end starts a
# 4 -> 7 rotation; after that the MS rotates every 2 epochs (7 -> 7).
#
# A rotation is timed from the first `dbqs status` that shows the configuration naming
# the next MS (`ms_next`) to the first that shows that MS in charge (its first
# configuration, which Handover makes the MS sign). Both ends are seen by polling, so each
# figure is high by up to one poll (the poll time is printed too). Bounded: ROTATIONS
# (default 4) rotations or TIMEOUT_S (default 600) seconds, whichever comes first; the
# devnet and its directory are removed on exit.
#
# Usage: benches/ms-rotation.sh   (env: NODES, EPOCH_MS, ROTATIONS, TIMEOUT_S, BASE_PORT)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
nodes=${NODES:-63}
epoch_ms=${EPOCH_MS:-3000}
rotations=${ROTATIONS:-4}
timeout_s=${TIMEOUT_S:-600}
port=${BASE_PORT:-7600}

cd "$root"
cargo build --release -q -p dbqs-server -p dbqs-client
bin=${CARGO_TARGET_DIR:-$root/target}/release
work=$(mktemp -d)
devnet_pid=
cleanup() {
  local rc=$?
  if [ -n "$devnet_pid" ]; then
    kill -INT "$devnet_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$devnet_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$devnet_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT INT TERM

echo "starting a release devnet of $nodes nodes (epochs of $epoch_ms ms, rotation every 2 epochs)"
started=$(date +%s.%N)
"$bin"/dbqs-server devnet --dir "$work/dn" --base-port "$port" --nodes "$nodes" \
  --epoch-ms "$epoch_ms" --ms-rotation-epochs 2 --fresh >"$work/devnet.log" 2>&1 &
devnet_pid=$!
for _ in $(seq 1 600); do
  grep -q "serving; Ctrl-C" "$work/devnet.log" 2>/dev/null && break
  kill -0 "$devnet_pid" 2>/dev/null || { tail -20 "$work/devnet.log"; exit 1; }
  sleep 0.2
done
grep -q "serving; Ctrl-C" "$work/devnet.log" || { echo "devnet did not start"; tail -20 "$work/devnet.log"; exit 1; }
echo "devnet serving after $(python3 -c "import time; print(round(time.time() - $started, 1))") s"

echo "adding node $((nodes + 1))"
"$bin"/dbqs-server devnet add-node --dir "$work/dn" --wait-s 120 | sed 's/^/  /'

python3 - "$bin/dbqs" "$work/dn/client.toml" "$rotations" "$timeout_s" <<'EOF'
import json, subprocess, sys, time

dbqs, cfg, want, timeout_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
deadline = time.time() + timeout_s
named = None      # (time, epoch, old MS, next MS) of the configuration naming the next MS
results = []
polls = []
while len(results) < want and time.time() < deadline:
    t0 = time.time()
    p = subprocess.run([dbqs, "--config", cfg, "--json", "status"], capture_output=True, text=True, timeout=60)
    t1 = time.time()
    polls.append(t1 - t0)
    if p.returncode != 0:
        time.sleep(0.2)
        continue
    d = json.loads(p.stdout)
    ms, nxt = d.get("ms_members", []), d.get("ms_next", [])
    if named is None and nxt:
        named = (t1, d["epoch"], ms, nxt)
        print(f"  epoch {d['epoch']}: next MS named ({len(ms)} -> {len(nxt)} members)", flush=True)
    elif named is not None and ms == named[3]:
        took = t1 - named[0]
        moved = len(set(named[3]) - set(named[2]))
        results.append((len(named[2]), len(named[3]), took, named[1], d["epoch"], moved))
        print(f"  epoch {d['epoch']}: new MS in charge; rotation {len(named[2])} -> {len(named[3])} took {took:.2f} s "
              f"({moved} of {len(named[3])} members new)", flush=True)
        named = None
    time.sleep(0.1)
polls.sort()
print(f"status polls: {len(polls)}, median {polls[len(polls)//2]:.2f} s (each figure is high by up to one poll)")
for old, new, took, e0, e1, moved in results:
    print(f"rotation {old} -> {new}: {took:.2f} s (named in epoch {e0}, in charge in epoch {e1})")
if len(results) < want:
    print(f"only {len(results)} of {want} rotations seen within {timeout_s:.0f} s")
    sys.exit(1)
EOF
