# Sourced by the test scripts: start a devnet in the background (the debug binary, or
# the release one with DEVNET_PROFILE=release) and wait until it serves.
# Usage: start_devnet WORKDIR BASE_PORT [devnet flags...]
# Sets $devnet_pid; the devnet's directory is WORKDIR/dn, its log WORKDIR/devnet.log.
start_devnet() {
  local work=$1 port=$2
  shift 2
  "${CARGO_TARGET_DIR:-$root/target}/${DEVNET_PROFILE:-debug}/dbqs-server" devnet --dir "$work/dn" --base-port "$port" "$@" \
    >"$work/devnet.log" 2>&1 &
  devnet_pid=$!
  for _ in $(seq 1 300); do
    grep -q "serving; Ctrl-C" "$work/devnet.log" 2>/dev/null && break
    kill -0 "$devnet_pid" 2>/dev/null || { cat "$work/devnet.log"; return 1; }
    sleep 0.2
  done
  grep -q "self-check passed" "$work/devnet.log" || { cat "$work/devnet.log"; return 1; }
}
