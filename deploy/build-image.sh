#!/usr/bin/env bash
# Builds static dbqs-server and dbqs binaries and an image FROM scratch around
# them. Usage: deploy/build-image.sh [TAG]   (default dbqs:dev)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tag=${1:-dbqs:dev}
target=x86_64-unknown-linux-gnu
cd "$root"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target "$target" -p dbqs-server -p dbqs-client
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
tdir=${CARGO_TARGET_DIR:-$root/target}
cp "$tdir/$target/release/dbqs-server" "$tdir/$target/release/dbqs" "$ctx/"
cp deploy/Dockerfile "$ctx/"
# Debug line tables are for local profiling; the image does without them.
command -v strip >/dev/null && strip "$ctx/dbqs-server" "$ctx/dbqs"
docker build -q -t "$tag" "$ctx" >/dev/null
echo "$tag"
