#!/usr/bin/env bash
# Captures the nodes' gRPC ports with tshark (installed from Debian's packages if
# missing) during a client workload and fails unless every TCP payload byte on
# them belongs to a well-formed TLS record: no plaintext gRPC anywhere. The
# status port (plain HTTP, read-only) is not captured.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tdir=${CARGO_TARGET_DIR:-$root/target}
# shellcheck source=deploy/devnet-lib.sh
. "$root/deploy/devnet-lib.sh"
if ! command -v tshark >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections 2>/dev/null || true
  apt-get update -qq >/dev/null
  apt-get install -y -qq tshark >/dev/null
fi
cargo build -q -p dbqs-server -p dbqs-client
work=$(mktemp -d)
devnet_pid=
cap=
cleanup() {
  local rc=$?
  [ -n "$cap" ] && kill "$cap" 2>/dev/null && wait "$cap" 2>/dev/null || true
  [ -n "$devnet_pid" ] && kill "$devnet_pid" 2>/dev/null && wait "$devnet_pid" 2>/dev/null || true
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT
base=${DBQS_TLS_TEST_PORT:-7200}
start_devnet "$work" "$base"
ports="$((base + 1))-$((base + 8))"
tshark -q -i lo -B 256 -f "tcp portrange $ports" -w "$work/cap.pcapng" 2>"$work/tshark.log" &
cap=$!
for _ in $(seq 1 50); do grep -q "Capturing on" "$work/tshark.log" 2>/dev/null && break; sleep 0.1; done
sleep 0.5

cfg="$work/dn/client.toml"
head -c 300000 /dev/urandom >"$work/blob"
echo "a small owned value" >"$work/small"
for i in 1 2 3; do
  "$tdir"/debug/dbqs --config "$cfg" put "tls-$i" "$work/small" >/dev/null
  "$tdir"/debug/dbqs --config "$cfg" get "tls-$i" -o "$work/out" >/dev/null
done
id=$("$tdir"/debug/dbqs --config "$cfg" put-blob "$work/blob")
"$tdir"/debug/dbqs --config "$cfg" get-blob "$id" -o "$work/out" >/dev/null
"$tdir"/debug/dbqs --config "$cfg" status >/dev/null
sleep 0.5
kill -INT "$cap"; wait "$cap" 2>/dev/null || true; cap=

tshark -r "$work/cap.pcapng" -o tcp.desegment_tcp_streams:FALSE -o tcp.relative_sequence_numbers:TRUE \
  -T fields -E separator=/t -e tcp.stream -e tcp.srcport -e tcp.flags.syn -e tcp.seq -e tcp.payload \
  >"$work/segments.tsv" 2>/dev/null
python3 - "$work/segments.tsv" <<'PY'
import sys
from collections import defaultdict

streams = defaultdict(dict)  # (stream, srcport) -> {seq: bytes}
syn = set()
for line in open(sys.argv[1]):
    parts = line.rstrip("\n").split("\t")
    if len(parts) < 5:
        continue
    stream, port, flag, seq, payload = parts[:5]
    key = (int(stream), int(port))
    if flag in ("1", "True"):
        syn.add(key)
    if payload:
        streams[key][int(seq)] = bytes.fromhex(payload.replace(":", ""))

checked = records = gaps = 0
errors = []
for key, segs in sorted(streams.items()):
    if key not in syn:
        continue  # a connection opened before the capture: its start is not seen
    data, expect = b"", 1
    for seq in sorted(segs):
        if seq < expect:  # retransmission
            seg = segs[seq][expect - seq:]
        elif seq > expect:
            # The capture lost a segment (a full kernel buffer on a busy
            # 2-core machine): what came before the gap is checked, what
            # follows cannot be framed, so it is left out and counted.
            gaps += 1
            break
        else:
            seg = segs[seq]
        data += seg
        expect += len(seg)
    i = 0
    while i + 5 <= len(data):
        ctype, major, length = data[i], data[i + 1], int.from_bytes(data[i + 3:i + 5], "big")
        if ctype not in (20, 21, 22, 23) or major != 3 or length > (1 << 14) + 256:
            errors.append(f"stream {key}: byte {i} is not a TLS record header: {data[i:i+16].hex()}")
            break
        i += 5 + length
        records += 1
    if i > len(data) and not errors:
        pass  # the capture ended inside a record
    elif i < len(data) and not errors:
        if len(data) - i >= 5:
            errors.append(f"stream {key}: trailing non-TLS bytes")
    checked += 1
if errors:
    sys.exit("plaintext or malformed TLS on the gRPC ports:\n" + "\n".join(errors[:10]))
if gaps * 10 > checked:
    sys.exit(f"the capture lost segments in {gaps} of {checked} TCP directions: too many to check")
if checked < 10 or records < 50:
    sys.exit(f"capture too small to mean anything: {checked} streams, {records} records")
print(f"tls capture: {checked} TCP directions from their first byte, {records} TLS records, no plaintext"
      + (f" ({gaps} directions checked up to a segment the capture lost)" if gaps else ""))
PY
