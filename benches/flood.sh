#!/usr/bin/env bash
# One client floods the cluster while three honest clients work (issue [H], point 3).
#
# On a release devnet of NODES (default 8) node processes: three honest closed-loop clients
# (`dbqs bench --clients 3 --op mixed`, the devnet's own client identity) run for
# DURATION seconds alone, then again while a second client identity (issued here with
# `dbqs admin client issue`) runs FLOOD_CLIENTS (default 256) concurrent read loops. The
# script prints both throughputs and their ratio (the target: at least 0.5), the
# flooder's own throughput and how many of its requests were refused, and the peak
# resident memory (VmHWM) of every node process, against the cap MEM_CAP_MIB (default
# 256) documented in docs/threat-model.md. Exit 1 if a node exceeds the cap; the
# throughput ratio is a figure to read, not a pass/fail (the machine's noise decides
# too much of it).
#
# Bounded: each phase runs DURATION seconds (default 10; the flooder DURATION+6); the
# devnet and its directory are removed on exit.
#
# Usage: benches/flood.sh   (env: NODES, DURATION, FLOOD_CLIENTS, MEM_CAP_MIB, BASE_PORT)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
nodes=${NODES:-8}
duration=${DURATION:-10}
flood_clients=${FLOOD_CLIENTS:-256}
mem_cap_mib=${MEM_CAP_MIB:-256}
port=${BASE_PORT:-7700}

cd "$root"
cargo build --release -q -p dbqs-server -p dbqs-client
bin=${CARGO_TARGET_DIR:-$root/target}/release
work=$(mktemp -d)
devnet_pid=
flood_pid=
cleanup() {
  local rc=$?
  [ -n "$flood_pid" ] && kill "$flood_pid" 2>/dev/null || true
  if [ -n "$devnet_pid" ]; then
    kill -INT "$devnet_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$devnet_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$devnet_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT INT TERM

echo "starting a release devnet of $nodes node processes"
"$bin"/dbqs-server devnet --dir "$work/dn" --base-port "$port" --nodes "$nodes" --processes \
  --fresh >"$work/devnet.log" 2>&1 &
devnet_pid=$!
for _ in $(seq 1 600); do
  grep -q "serving; Ctrl-C" "$work/devnet.log" 2>/dev/null && break
  kill -0 "$devnet_pid" 2>/dev/null || { tail -20 "$work/devnet.log"; exit 1; }
  sleep 0.2
done
grep -q "serving; Ctrl-C" "$work/devnet.log" || { echo "devnet did not start"; tail -20 "$work/devnet.log"; exit 1; }

honest="$work/dn/client.toml"
"$bin"/dbqs --config "$honest" admin client issue --out "$work/flooder" --label flooder >/dev/null
flooder="$work/flooder/client.toml"

bench() { # config clients op seconds out
  "$bin"/dbqs --config "$1" --json bench --clients "$2" --op "$3" --duration "$4" \
    --ops 10000000 --prefix "$5" >"$work/$5.json"
}

echo "honest clients alone: 3 × mixed for ${duration} s"
bench "$honest" 3 mixed "$duration" alone
echo "flooder: $flood_clients read loops for $((duration + 6)) s, honest clients again after 3 s"
bench "$flooder" "$flood_clients" read "$((duration + 6))" flood &
flood_pid=$!
sleep 3
bench "$honest" 3 mixed "$duration" under
wait "$flood_pid" || true
flood_pid=

pids=$(pgrep -f "dbqs-server run --config $work/dn" || true)
python3 - "$work" "$mem_cap_mib" $pids <<'EOF'
import json, sys
work, cap = sys.argv[1], int(sys.argv[2])
pids = sys.argv[3:]
r = {k: json.load(open(f"{work}/{k}.json"))["result"] for k in ("alone", "under", "flood")}
print(f"{'run':<22}{'ops/s':>10}{'avg ms':>9}{'p99 ms':>9}{'errors':>9}")
for name, k in (("honest, alone", "alone"), ("honest, under flood", "under"), ("flooder", "flood")):
    x = r[k]
    print(f"{name:<22}{x['ops_per_s']:>10.0f}{x['avg_ms']:>9.2f}{x['p99_ms']:>9.2f}{x['errors']:>9}")
ratio = r["under"]["ops_per_s"] / max(r["alone"]["ops_per_s"], 1e-9)
print(f"honest throughput under flood / alone: {ratio:.2f} (target >= 0.50)")
worst = 0
for pid in pids:
    try:
        status = open(f"/proc/{pid}/status").read()
    except OSError:
        continue
    hwm = next((int(l.split()[1]) for l in status.splitlines() if l.startswith("VmHWM:")), 0)
    worst = max(worst, hwm)
print(f"node processes: {len(pids)}, peak resident memory of the largest: {worst / 1024:.0f} MiB (cap {cap} MiB)")
sys.exit(1 if worst / 1024 > cap else 0)
EOF
