#!/usr/bin/env bash
# Container tests against the 8-node compose cluster (compose.yaml): a client
# workload while (a) one node per group is killed and restarted, (b) two nodes
# of one group are stopped, (c) a node is cut off with `docker network
# disconnect` and rejoined, (d) every node is restarted in turn. Every
# acknowledged write must read back with its last acknowledged value, and no
# read may ever return anything else. Bounded in time; cleans up containers,
# volumes, network and image. Before each workload it waits (bounded) until a client
# can get a freshness lease again, and logs how long the MS took to recover.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/deploy"
project="dbqs-ct-$$"
image="dbqs:ct-$$"
export DBQS_IMAGE=$image
work=$(mktemp -d)
dc() { timeout 120 docker-compose -p "$project" -f compose.yaml "$@"; }
cleanup() {
  local rc=$?
  dc down -v --remove-orphans >/dev/null 2>&1 || true
  docker rmi -f "$image" >/dev/null 2>&1 || true
  rm -rf "$root/deploy/cluster" "$work"
  exit $rc
}
trap cleanup EXIT
log() { echo "[$(date +%T)] $*"; }

log "building the image"
bash "$root/deploy/build-image.sh" "$image" >/dev/null
dbqs="${CARGO_TARGET_DIR:-$root/target}/x86_64-unknown-linux-gnu/release/dbqs"

rm -rf cluster
addrs=$(for i in $(seq 11 18); do printf '172.28.0.%s:7101,' "$i"; done)
"$dbqs" genesis --dir cluster --addresses "${addrs%,}" --listen-host 0.0.0.0 --f 1 >/dev/null
cfg="$root/deploy/cluster/client.toml"
sed -i 's/^timeout_ms = .*/timeout_ms = 3000/' "$cfg"

wait_healthy() { # service...
  local deadline=$((SECONDS + 60))
  for s in "$@"; do
    while :; do
      local id st
      id=$(dc ps -q "$s")
      st=$(docker inspect --format '{{.State.Health.Status}}' "$id" 2>/dev/null || echo none)
      [ "$st" = healthy ] && break
      [ $SECONDS -ge $deadline ] && { echo "$s not healthy: $st"; dc logs --tail 20 "$s"; return 1; }
      sleep 1
    done
  done
}

log "starting 8 nodes"
dc up -d >/dev/null
nodes=$(printf 'n%02d ' $(seq 1 8))
wait_healthy $nodes

declare -A acked maybe
wrong=0
# The history of every operation, for the linearizability checker (lincheck,
# docs/linearizability.md): one JSON object per line; an operation that failed
# has no completion time (indeterminate).
history="$work/history.jsonl"
: >"$history"
now_ns() { date +%s%N; }
put() { # name value -> 0 if acknowledged
  printf '%s' "$2" >"$work/v"
  local t0 t1
  t0=$(now_ns)
  if "$dbqs" --config "$cfg" put "$1" "$work/v" >/dev/null 2>"$work/err"; then
    t1=$(now_ns)
    printf '{"client":1,"key":"%s","op":"write","value":"%s","invoke_ns":%s,"complete_ns":%s}\n' "$1" "$2" "$t0" "$t1" >>"$history"
    acked[$1]=$2
    return 0
  fi
  printf '{"client":1,"key":"%s","op":"write","value":"%s","invoke_ns":%s,"error":"failed"}\n' "$1" "$2" "$t0" >>"$history"
  grep -q "quorum not reached" "$work/err" || { echo "unclear error: $(cat "$work/err")"; return 2; }
  # A failed write is indeterminate: it may still have taken effect, so a later
  # read may return it (it can be linearized at any point after it started).
  maybe[$1]="${maybe[$1]:-}|$2|"
  return 1
}
check() { # name -> 0 right, 1 failed cleanly; counts wrong values
  local want=${acked[$1]}
  local t0 t1
  t0=$(now_ns)
  if "$dbqs" --config "$cfg" get "$1" -o "$work/o" >/dev/null 2>"$work/err"; then
    t1=$(now_ns)
    local got
    got=$(cat "$work/o")
    printf '{"client":1,"key":"%s","op":"read","invoke_ns":%s,"complete_ns":%s,"result":"%s"}\n' "$1" "$t0" "$t1" "$got" >>"$history"
    if [ "$got" != "$want" ] && [[ "${maybe[$1]:-}" != *"|$got|"* ]]; then
      echo "WRONG VALUE for $1: got '$(cat "$work/o")', last acknowledged '$want'"
      wrong=$((wrong + 1))
    fi
    return 0
  fi
  grep -q "quorum not reached" "$work/err" || { echo "unclear error: $(cat "$work/err")"; wrong=$((wrong + 1)); }
  return 1
}
# Waits until a client can get a freshness lease again (the MS orders freshness
# through PBFT: losing its primary costs a view change first), and logs how long it
# took. Bounded.
wait_lease() { # what
  local t0 t1
  t0=$(now_ns)
  for _ in $(seq 1 60); do
    if "$dbqs" --config "$cfg" lease >/dev/null 2>&1; then
      t1=$(now_ns)
      log "  a new client got a lease $(( (t1 - t0) / 1000000 )) ms after $1"
      return 0
    fi
    sleep 0.2
  done
  echo "no freshness lease for 30 s after $1"
  exit 1
}
fails=0
workload() { # tag count -> sets $fails to the number of failed writes
  fails=0
  local rc
  for k in $(seq 1 "$2"); do
    rc=0
    put "obj-$k" "$1 $k" || rc=$?
    [ $rc = 2 ] && exit 1
    [ $rc = 0 ] || fails=$((fails + 1))
  done
}

log "services listed by reflection from Python grpcio"
venv=${DBQS_PY_VENV:-$root/target/py-venv}
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
"$venv/bin/pip" install -q --disable-pip-version-check grpcio grpcio-reflection
"$venv/bin/python" "$root/tests/python/reflection.py" "$cfg" | sed 's/^/  /'

log "baseline workload"
workload base 24; [ "$fails" = 0 ] || { echo "writes failed with all nodes up"; exit 1; }

# Ring order, so we know which nodes share groups (groups are 4 consecutive).
"$dbqs" --config "$cfg" --json status >"$work/status.json"
ring=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(" ".join(m["address"].split(":")[0].split(".")[3] for m in d["members"]))' "$work/status.json")
svc() { printf 'n%02d' $(($1 - 10)); }
ring_svcs=(); for o in $ring; do ring_svcs+=("$(svc "$o")"); done
log "ring order: ${ring_svcs[*]}"

log "(a) kill -9 one node per group (ring positions 0 and 4), workload, restart"
for p in 0 4; do
  s=${ring_svcs[$p]}
  dc kill -s SIGKILL "$s" >/dev/null
  wait_lease "killing $s"
  workload "a$p" 24; [ "$fails" = 0 ] || { echo "(a) $fails writes failed with one node down"; exit 1; }
  for k in $(seq 1 24); do check "obj-$k" || { echo "(a) read failed with one node down"; exit 1; }; done
  dc start "$s" >/dev/null; wait_healthy "$s"
done

# Two ring neighbours of which at most one is an MS member: the MS (4 of the 8
# nodes, f_ms = 1) must keep its quorum, or every lease lapses and every write fails.
ms_flags=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(" ".join("1" if m["ms"] else "0" for m in d["members"]))' "$work/status.json")
read -r -a ms_at <<<"$ms_flags"
b1=; for p in 1 2 3 4 5 6 7 0; do q=$(( (p + 1) % 8 )); if [ $(( ms_at[p] + ms_at[q] )) -le 1 ]; then b1=$p; b2=$q; break; fi; done
[ -n "$b1" ] || { echo "no two ring neighbours with at most one MS member"; exit 1; }
log "(b) stop two nodes of one group (ring positions $b1 and $b2, MS members: $(( ms_at[b1] + ms_at[b2] )))"
dc stop -t 2 "${ring_svcs[$b1]}" "${ring_svcs[$b2]}" >/dev/null
wait_lease "stopping ${ring_svcs[$b1]} and ${ring_svcs[$b2]}"
workload b 24
log "(b) $fails of 24 writes failed cleanly (their group lost 2 of 4); the rest succeeded"
[ "$fails" -gt 0 ] && [ "$fails" -lt 24 ] || { echo "(b) expected some but not all writes to fail, got $fails"; exit 1; }
for k in $(seq 1 24); do check "obj-$k" || true; done
dc start "${ring_svcs[$b1]}" "${ring_svcs[$b2]}" >/dev/null; wait_healthy "${ring_svcs[$b1]}" "${ring_svcs[$b2]}"

log "(c) cut one node off the network, workload, rejoin"
s=${ring_svcs[5]}
net="${project}_dbqs"
docker network disconnect "$net" "$(dc ps -q "$s")"
wait_lease "cutting $s off"
workload c 24; [ "$fails" = 0 ] || { echo "(c) $fails writes failed with one node cut off"; exit 1; }
docker network connect --ip "172.28.0.$((10#${s#n} + 10))" "$net" "$(dc ps -q "$s")"
wait_healthy "$s"

log "(d) rolling restart of every node"
for s in $nodes; do
  dc restart -t 5 "$s" >/dev/null; wait_healthy "$s"; wait_lease "restarting $s"
  put "roll-$s" "written after restarting $s" || { echo "(d) write failed after restarting $s"; exit 1; }
done

log "final check: every acknowledged write reads back"
missing=0
for name in "${!acked[@]}"; do check "$name" || missing=$((missing + 1)); done
[ "$wrong" = 0 ] || { echo "$wrong wrong values"; exit 1; }
log "checking the history ($(wc -l <"$history") operations) with lincheck"
cargo build -q -p dbqs-tests --bin lincheck
"${CARGO_TARGET_DIR:-$root/target}/debug/lincheck" "$history" || { cp "$history" "$root/target/container-history.jsonl"; echo "history kept in target/container-history.jsonl"; exit 1; }
[ "$missing" = 0 ] || { echo "$missing acknowledged writes not readable"; exit 1; }
log "container tests passed: ${#acked[@]} objects acknowledged, all read back"
