#!/usr/bin/env bash
# dBQS f=1 vs dBQS f=0 vs etcd, side by side, in one run on this host (issue [G], #9).
#
# Every system gets the same closed-loop client shape, 100-byte values (VALUE_SIZE), 50
# unmeasured warm-up operations per client, reads over keys written beforehand:
#   * the audit's shape: 3 clients × 10,000 operations, writes and reads separately,
#     bounded by AUDIT_DURATION seconds (default 60);
#   * 1 and 64 clients, writes and reads, SHORT_DURATION seconds each (default 15).
# The systems, one at a time (the others stopped, so they do not share the 2 cores):
#   * dBQS f=1: a release devnet (8 nodes, groups of 4, quorums of 3, mutual TLS, redb
#     with fsync), driven by `dbqs bench`;
#   * dBQS f=0: `devnet --nodes 1 --f 0`, the same code on one node, by `dbqs bench`;
#   * etcd: Debian's etcd-server, 3 members on 127.0.0.1 with mutual TLS (P-256
#     certificates made here with openssl) and etcd's default fsync, driven by
#     `etcd-bench` (benches/harness): `put` for writes, linearizable `get` for reads.
#
# Two more sections (SECTIONS, default "load ms scale"; "load" is the above):
#   * ms: a release devnet of 8 node processes (`devnet --processes`, no periodic MS
#     rotation) and `ms-bench` (benches/harness): the client's freshness (lease) round
#     trip, and per epoch change the time from the MS ending the epoch to the combined
#     ConfigCert being ordered and to every node adopting it, from the nodes' logs
#     (ms.json, ms.md). If the binary directory (or PBFT_BENCH) holds `pbft-bench`
#     (built here with dbqs-ms when DBQS_BIN_DIR is not set), its PBFT null-op figures
#     are run first and added (pbft.json); otherwise the published ones in
#     docs/benchmarks.md stand;
#   * scale: `scale-bench` (benches/harness): configuration size, encode / verify /
#     ring build / lookup times and the epoch-change push volume for 1,000, 10,000 and
#     100,000 nodes, with the project's own code on synthetic members (scale.json,
#     scale.md).
#
# Output: one JSON file per run in target/bench/compare/ (SYSTEM-OP-cCLIENTS.json), the
# combined target/bench/compare/results.json, the Markdown table
# target/bench/compare/table.md (also printed), and the charts compare-throughput.png
# and compare-latency.png in PNG_DIR (docs/bench; with QUICK=1 target/bench/compare, so
# a smoke test never overwrites the published figures).
#
# QUICK=1: 3-second runs, 500 operations per audit client, 10 warm-up operations; the
# whole script takes about 3 minutes once built. The full run takes about 10 minutes.
# QUICK=1 also makes the ms section 50 freshness rounds and 2 epoch changes of 2 s
# epochs, and the scale section 3 repetitions and 20,000 lookups per size.
# The ms and scale sections' Markdown is appended to table.md.
# Every wait is bounded; each run is killed after its duration plus a margin; all
# processes and the temporary directory are removed on exit.
#
# Needs root for apt-get (etcd-server, etcd-client, protobuf-compiler for the
# harness's etcd-client crate, fonts-dejavu-core for the charts' text) when they are
# missing.
#
# Usage: benches/compare.sh
#   env: QUICK, DBQS_BIN_DIR (dir with dbqs-server and dbqs; default: build them here),
#        AUDIT_DURATION, SHORT_DURATION, VALUE_SIZE, BASE_PORT (dBQS, default 7300),
#        ETCD_PORT (etcd client ports ETCD_PORT+1..3, peer ports +11..13; default 23790),
#        SYSTEMS (default "dbqs-f1 dbqs-f0 etcd"), SECTIONS (default "load ms scale"),
#        PBFT_BENCH (path of pbft-bench; default DBQS_BIN_DIR/pbft-bench if present),
#        MS_ROUNDS, MS_EPOCHS, MS_EPOCH_MS, SCALE_NODES (default 1000,10000,100000),
#        PNG_DIR, NICE (default 19)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

quick=${QUICK:-0}
if [ "$quick" = 1 ]; then
  mode=quick
  audit_duration=${AUDIT_DURATION:-3}
  short_duration=${SHORT_DURATION:-3}
  audit_ops=500
  warmup=10
  ms_rounds=${MS_ROUNDS:-50}
  ms_epochs=${MS_EPOCHS:-2}
  ms_epoch_ms=${MS_EPOCH_MS:-2000}
  scale_args=(--reps 3 --lookups 20000 --budget-s 3)
  pbft_args=(--ops 300 --duration-s 5 --warmup-ops 30)
  png_dir=${PNG_DIR:-$root/target/bench/compare}
else
  mode=full
  audit_duration=${AUDIT_DURATION:-60}
  short_duration=${SHORT_DURATION:-15}
  audit_ops=10000
  warmup=50
  ms_rounds=${MS_ROUNDS:-200}
  ms_epochs=${MS_EPOCHS:-4}
  ms_epoch_ms=${MS_EPOCH_MS:-5000}
  scale_args=()
  pbft_args=(--ops 2000 --duration-s 20)
  png_dir=${PNG_DIR:-$root/docs/bench}
fi
value_size=${VALUE_SIZE:-100}
base_port=${BASE_PORT:-7300}
etcd_port=${ETCD_PORT:-23790}
systems=${SYSTEMS:-"dbqs-f1 dbqs-f0 etcd"}
sections=${SECTIONS:-"load ms scale"}
scale_nodes=${SCALE_NODES:-1000,10000,100000}
has_section() { [[ " $sections " == *" $1 "* ]]; }
for s in $sections; do
  case $s in
    load | ms | scale) ;;
    *) echo "unknown section $s (load, ms, scale)"; exit 1 ;;
  esac
done
nice_level=${NICE:-19}
out=$root/target/bench/compare
harness_target=$root/target/bench-harness
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# The shapes: op clients ops-per-client seconds. The short shapes' operation count is
# only a bound; their duration ends them.
shapes=(
  "write 3 $audit_ops $audit_duration"
  "read 3 $audit_ops $audit_duration"
  "write 1 1000000 $short_duration"
  "read 1 1000000 $short_duration"
  "write 64 1000000 $short_duration"
  "read 64 1000000 $short_duration"
)

run_nice() { nice -n "$nice_level" "$@"; }
log() { echo "[$(date +%H:%M:%S)] $*"; }

# ---- prerequisites ---------------------------------------------------------------
need=()
if has_section load && [[ " $systems " == *" etcd "* ]]; then
  command -v etcd >/dev/null || need+=(etcd-server)
  command -v etcdctl >/dev/null || need+=(etcd-client)
fi
command -v protoc >/dev/null || need+=(protobuf-compiler)
[ -d /usr/include/google/protobuf ] || need+=(libprotobuf-dev)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
command -v openssl >/dev/null || need+=(openssl)
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 300 apt-get update -qq
  timeout 600 apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

log "building the harness (etcd-bench, bench-plot, ms-bench, scale-bench)"
CARGO_TARGET_DIR=$harness_target run_nice cargo build --release -q \
  --manifest-path "$root/benches/harness/Cargo.toml"
harness=$harness_target/release

if [ -n "${DBQS_BIN_DIR:-}" ]; then
  bin=$DBQS_BIN_DIR
else
  pkgs=(-p dbqs-server -p dbqs-client)
  # The ms section also runs pbft-bench, a binary of dbqs-ms.
  has_section ms && pkgs+=(-p dbqs-ms)
  log "building ${pkgs[*]} (release)"
  run_nice cargo build --release -q "${pkgs[@]}"
  bin=${CARGO_TARGET_DIR:-$root/target}/release
fi
for b in dbqs-server dbqs; do
  [ -x "$bin/$b" ] || { echo "no $bin/$b (set DBQS_BIN_DIR)"; exit 1; }
done

# ---- clean-up ----------------------------------------------------------------------
work=$(mktemp -d /tmp/dbqs-compare.XXXXXX)
devnet_pid=
etcd_pids=()
stop_devnet() {
  [ -n "$devnet_pid" ] || return 0
  kill -INT "$devnet_pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$devnet_pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$devnet_pid" 2>/dev/null || true
  wait "$devnet_pid" 2>/dev/null || true
  devnet_pid=
}
stop_etcd() {
  local p
  for p in "${etcd_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${etcd_pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  etcd_pids=()
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_devnet
  stop_etcd
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT INT TERM

mkdir -p "$out"
rm -f "$out/table.md"
if has_section load; then
  rm -f "$out"/dbqs-*.json "$out"/etcd-*.json "$out/results.json"
fi
has_section ms && rm -f "$out/ms.json" "$out/ms.md" "$out/pbft.json"
has_section scale && rm -f "$out/scale.json" "$out/scale.md"
failures=0

# record SYSTEM LABEL OP CLIENTS RAW_OUTPUT_FILE ERR_FILE: writes the run's JSON file,
# wrapping the load generator's one line of JSON with the system's name.
record() {
  local system=$1 label=$2 op=$3 clients=$4 raw=$5 err=$6
  local file="$out/$system-$op-c$clients.json" line
  line=$(grep '^{' "$raw" | tail -1 || true)
  if [ -n "$line" ]; then
    printf '{"system":"%s","label":"%s","output":%s}\n' "$system" "$label" "$line" >"$file"
    log "$label $op x$clients: $(summary_of "$line")"
  else
    local why
    why=$(tail -3 "$err" | tr '\n"\\' "  /" | cut -c1-300)
    printf '{"system":"%s","label":"%s","output":null,"failure":"%s %s x%s: %s"}\n' \
      "$system" "$label" "$label" "$op" "$clients" "$why" >"$file"
    log "$label $op x$clients FAILED: $why"
    failures=$((failures + 1))
  fi
}

# A one-line summary of a bench JSON line, for the log (no jq needed).
summary_of() {
  local ops avg
  ops=$(sed -n 's/.*"ops_per_s":\([0-9.]*\).*/\1/p' <<<"$1")
  avg=$(sed -n 's/.*"avg_ms":\([0-9.]*\).*/\1/p' <<<"$1")
  printf '%.0f ops/s, avg %.2f ms' "${ops:-0}" "${avg:-0}"
}

# ---- dBQS --------------------------------------------------------------------------
# run_dbqs SYSTEM LABEL PORT [devnet args...]
run_dbqs() {
  local system=$1 label=$2 port=$3
  shift 3
  local dir="$work/$system"
  # No periodic MS rotation during load runs: rotations are timed by ms-rotation.sh, and
  # one in the middle of a run would mix its handover into the latency figures.
  set -- --ms-rotation-epochs 0 "$@"
  log "starting $label: devnet $*"
  nice -n "$nice_level" "$bin/dbqs-server" devnet --dir "$dir" --base-port "$port" --fresh "$@" \
    >"$work/$system.log" 2>&1 &
  devnet_pid=$!
  for _ in $(seq 1 600); do
    grep -q "serving; Ctrl-C" "$work/$system.log" 2>/dev/null && break
    kill -0 "$devnet_pid" 2>/dev/null || break
    sleep 0.2
  done
  if ! grep -q "serving; Ctrl-C" "$work/$system.log"; then
    echo "$label did not start:"
    tail -20 "$work/$system.log"
    exit 1
  fi
  local shape op clients ops secs raw err
  for shape in "${shapes[@]}"; do
    read -r op clients ops secs <<<"$shape"
    raw="$work/$system-$op-$clients.out"
    err="$work/$system-$op-$clients.err"
    # Margin over the measured phase: prefill, warm-up and the slowest client's last op.
    timeout -k 5 $((secs + 90)) nice -n "$nice_level" "$bin/dbqs" --config "$dir/client.toml" \
      --json bench --clients "$clients" --ops "$ops" --warmup "$warmup" --op "$op" \
      --value-size "$value_size" --duration "$secs" --prefix "$op$clients" \
      >"$raw" 2>"$err" || true
    record "$system" "$label" "$op" "$clients" "$raw" "$err"
  done
  stop_devnet
}

# ---- etcd --------------------------------------------------------------------------
# make_certs DIR: a P-256 CA, one certificate per member and one for the client, all
# with SAN IP:127.0.0.1 and extendedKeyUsage serverAuth,clientAuth.
make_certs() {
  local d=$1 name
  mkdir -p "$d"
  (
    cd "$d"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key 2>/dev/null
    openssl req -x509 -new -key ca.key -subj /CN=compare-bench-ca -days 2 -out ca.pem \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    cat >leaf.ext <<'EOF'
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=IP:127.0.0.1
EOF
    for name in m1 m2 m3 client; do
      openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$name.key" 2>/dev/null
      openssl req -new -key "$name.key" -subj "/CN=$name" -out "$name.csr"
      openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile leaf.ext -out "$name.pem" 2>/dev/null
    done
  )
}

run_etcd() {
  local system=etcd label=etcd d="$work/etcd" i cluster="" endpoints=""
  log "starting etcd $(etcd --version | head -1 | sed 's/etcd Version: //'): 3 members, mutual TLS"
  make_certs "$d/tls"
  for i in 1 2 3; do
    cluster+="${cluster:+,}m$i=https://127.0.0.1:$((etcd_port + 10 + i))"
    endpoints+="${endpoints:+,}https://127.0.0.1:$((etcd_port + i))"
  done
  for i in 1 2 3; do
    nice -n "$nice_level" etcd --name "m$i" --data-dir "$d/m$i" \
      --listen-client-urls "https://127.0.0.1:$((etcd_port + i))" \
      --advertise-client-urls "https://127.0.0.1:$((etcd_port + i))" \
      --listen-peer-urls "https://127.0.0.1:$((etcd_port + 10 + i))" \
      --initial-advertise-peer-urls "https://127.0.0.1:$((etcd_port + 10 + i))" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token "compare-$$" \
      --cert-file "$d/tls/m$i.pem" --key-file "$d/tls/m$i.key" \
      --trusted-ca-file "$d/tls/ca.pem" --client-cert-auth \
      --peer-cert-file "$d/tls/m$i.pem" --peer-key-file "$d/tls/m$i.key" \
      --peer-trusted-ca-file "$d/tls/ca.pem" --peer-client-cert-auth \
      --logger zap --log-outputs stderr \
      >"$d.m$i.log" 2>&1 &
    etcd_pids+=($!)
  done
  local tls=(--cacert "$d/tls/ca.pem" --cert "$d/tls/client.pem" --key "$d/tls/client.key")
  local healthy=
  for _ in $(seq 1 60); do
    if ETCDCTL_API=3 timeout 10 etcdctl --endpoints "$endpoints" "${tls[@]}" \
      --command-timeout 3s endpoint health >/dev/null 2>&1; then
      healthy=1
      break
    fi
    sleep 0.5
  done
  if [ -z "$healthy" ]; then
    echo "etcd did not become healthy:"
    tail -5 "$d".m*.log
    exit 1
  fi
  local shape op clients ops secs raw err
  for shape in "${shapes[@]}"; do
    read -r op clients ops secs <<<"$shape"
    raw="$work/$system-$op-$clients.out"
    err="$work/$system-$op-$clients.err"
    timeout -k 5 $((secs + 90)) nice -n "$nice_level" "$harness/etcd-bench" \
      --endpoints "$endpoints" "${tls[@]}" --json \
      --clients "$clients" --ops "$ops" --warmup "$warmup" --op "$op" \
      --value-size "$value_size" --duration "$secs" --prefix "$op$clients" \
      >"$raw" 2>"$err" || true
    record "$system" "$label" "$op" "$clients" "$raw" "$err"
  done
  stop_etcd
}

# ---- the MS: freshness, EndEpoch -> ConfigCert, PBFT null op ------------------------
run_ms() {
  local dir="$work/ms" port=$((base_port + 200))
  local pbft=${PBFT_BENCH:-$bin/pbft-bench} pbft_arg=()
  # The PBFT null op first: pbft-bench runs its own replicas in one process, so it runs
  # before the devnet starts rather than beside it.
  if [ -x "$pbft" ]; then
    log "pbft-bench ${pbft_args[*]}"
    if timeout -k 5 600 nice -n "$nice_level" "$pbft" "${pbft_args[@]}" --json \
      >"$out/pbft.json" 2>"$work/pbft.err"; then
      pbft_arg=(--pbft-json "$out/pbft.json")
    else
      log "pbft-bench FAILED: $(tail -3 "$work/pbft.err" | tr '\n' ' ')"
      rm -f "$out/pbft.json"
      failures=$((failures + 1))
    fi
  else
    log "no $pbft: PBFT null-op figures not rerun (cargo build --release -p dbqs-ms --bin pbft-bench; docs/benchmarks.md has the published ones)"
  fi
  log "starting the MS devnet: 8 node processes, ${ms_epoch_ms} ms epochs, no periodic MS rotation"
  nice -n "$nice_level" "$bin/dbqs-server" devnet --dir "$dir" --base-port "$port" --fresh \
    --processes --epoch-ms "$ms_epoch_ms" --ms-rotation-epochs 0 >"$work/ms.log" 2>&1 &
  devnet_pid=$!
  for _ in $(seq 1 600); do
    grep -q "serving; Ctrl-C" "$work/ms.log" 2>/dev/null && break
    kill -0 "$devnet_pid" 2>/dev/null || break
    sleep 0.2
  done
  if ! grep -q "serving; Ctrl-C" "$work/ms.log"; then
    echo "the MS devnet did not start:"
    tail -20 "$work/ms.log"
    exit 1
  fi
  # ms-bench: freshness rounds (bounded by 60 s), then up to (epochs + 2) epochs of logs.
  if timeout -k 5 $((60 + (ms_epochs + 2) * ms_epoch_ms / 1000 + 60)) \
    nice -n "$nice_level" "$harness/ms-bench" --config "$dir/client.toml" \
    --rounds "$ms_rounds" --warmup 10 --duration-s 60 --logs "$dir/nodes" \
    --epochs "$ms_epochs" "${pbft_arg[@]}" --mode "$mode" \
    --json "$out/ms.json" --markdown "$out/ms.md" \
    >"$work/ms-bench.out" 2>"$work/ms-bench.err"; then
    log "$(grep -m1 'ms-bench: freshness' "$work/ms-bench.err" || echo ms-bench done)"
  else
    log "ms-bench FAILED: $(tail -3 "$work/ms-bench.err" | tr '\n' ' ')"
    failures=$((failures + 1))
  fi
  stop_devnet
}

# ---- scale: configuration size, verification, lookups, propagation -----------------
run_scale() {
  log "scale-bench: ${scale_nodes} nodes"
  if timeout -k 5 600 nice -n "$nice_level" "$harness/scale-bench" --nodes "$scale_nodes" \
    "${scale_args[@]}" --mode "$mode" --json "$out/scale.json" --markdown "$out/scale.md" \
    >"$work/scale.out" 2>"$work/scale.err"; then
    log "scale-bench done"
  else
    log "scale-bench FAILED: $(tail -3 "$work/scale.err" | tr '\n' ' ')"
    failures=$((failures + 1))
  fi
}

# ---- the runs ----------------------------------------------------------------------
log "mode $mode, sections: $sections"
if has_section load; then
  log "load: audit shape ${audit_duration} s, 1/64 clients ${short_duration} s, ${value_size}-byte values"
  for s in $systems; do
    case $s in
      dbqs-f1) run_dbqs dbqs-f1 "dBQS f=1" "$base_port" ;;
      dbqs-f0) run_dbqs dbqs-f0 "dBQS f=0" "$((base_port + 100))" --nodes 1 --f 0 ;;
      etcd) run_etcd ;;
      *) echo "unknown system $s"; exit 1 ;;
    esac
  done
fi
has_section ms && run_ms
has_section scale && run_scale

# ---- combine, tabulate, plot -------------------------------------------------------
host="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores, $(uname -sr)"
if has_section load; then
  {
    printf '{"mode":"%s","date":"%s","host":"%s","runs":[\n' "$mode" "$started" "${host//\"/}"
    first=1
    for s in $systems; do
      for shape in "${shapes[@]}"; do
        read -r op clients _ _ <<<"$shape"
        f="$out/$s-$op-c$clients.json"
        [ -f "$f" ] || continue
        [ "$first" = 1 ] || printf ',\n'
        first=0
        tr -d '\n' <"$f"
      done
    done
    printf '\n]}\n'
  } >"$out/results.json"

  log "results: $out/results.json"
  "$harness/bench-plot" --input "$out/results.json" --png-dir "$png_dir" --table "$out/table.md"
  log "charts: $png_dir/compare-throughput.png, $png_dir/compare-latency.png"
fi
# The sections' own tables, after the load table (printed as they are appended).
for f in ms scale; do
  if has_section "$f" && [ -f "$out/$f.md" ]; then
    { [ -s "$out/table.md" ] && echo; cat "$out/$f.md"; } | tee -a "$out/table.md"
  fi
done
log "table: $out/table.md (host: $host)"
if [ "$failures" -gt 0 ]; then
  echo "$failures run(s) failed (see the table)"
  exit 1
fi
