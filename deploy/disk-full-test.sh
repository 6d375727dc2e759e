#!/usr/bin/env bash
# A full disk under one replica (issue [H], point 5): mounts a 24 MiB tmpfs, puts one
# node's store file on it, fills it, and checks that the node's writes fail cleanly,
# the cluster goes on, and the node stores writes again once space returns
# (dbqs-server/tests/disk_full.rs). Needs root for the mount (CI runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "disk-full-test: needs root to mount a tmpfs" >&2
  exit 1
fi
mnt=$(mktemp -d /tmp/dbqs-full-XXXXXX)
cleanup() { umount "$mnt" 2>/dev/null || true; rmdir "$mnt" 2>/dev/null || true; }
trap cleanup EXIT INT TERM
mount -t tmpfs -o size=24m,mode=0700 tmpfs "$mnt"
DBQS_FULL_DISK_DIR="$mnt" cargo test -q -p dbqs-server --test disk_full -- --ignored --nocapture
