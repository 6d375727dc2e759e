#!/usr/bin/env bash
# Loads a node's status page in headless Chromium (installed from Debian's
# packages if missing) and checks what it shows against `dbqs status --json`:
# the epoch, every member, which members are MS members, that every member
# answers, and (the devnet's membership is static) that the Transfers section has
# nothing to take over and no member joined or left. Writes a screenshot to docs/status-page.png when SCREENSHOT=1.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tdir=${CARGO_TARGET_DIR:-$root/target}
# shellcheck source=deploy/devnet-lib.sh
. "$root/deploy/devnet-lib.sh"
if ! command -v chromium >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq chromium >/dev/null
fi
cargo build -q -p dbqs-server -p dbqs-client
work=$(mktemp -d)
devnet_pid=
cleanup() {
  local rc=$?
  [ -n "$devnet_pid" ] && kill "$devnet_pid" 2>/dev/null && wait "$devnet_pid" 2>/dev/null || true
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT
port=${DBQS_STATUS_TEST_PORT:-7500}
start_devnet "$work" "$port"
url="http://127.0.0.1:$((port + 1001))/"
chrome=(chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-dev-shm-usage)
timeout 60 "${chrome[@]}" --dump-dom "$url" >"$work/page.html" 2>/dev/null
"$tdir"/debug/dbqs --config "$work/dn/client.toml" --json status >"$work/status.json"
python3 - "$work/page.html" "$work/status.json" "$((port + 1))" <<'PY'
import json, sys
from html.parser import HTMLParser

class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.rows, self.cur, self.field, self.in_members = {}, [], None, None, False
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.field = a["id"]
            if a["id"] == "members":
                self.in_members = True
        if tag == "tr" and self.in_members and "data-node" in a:
            self.cur = {"node": a["data-node"], "class": a.get("class"), "cells": []}
        if tag == "td" and self.cur is not None:
            self.cur["cells"].append("")
    def handle_endtag(self, tag):
        self.field = None
        if tag == "tr" and self.cur is not None:
            self.rows.append(self.cur)
            self.cur = None
        if tag == "table":
            self.in_members = False
    def handle_data(self, data):
        if self.cur is not None and self.cur["cells"]:
            self.cur["cells"][-1] += data
        elif self.field:
            self.ids.setdefault(self.field, "")
            self.ids[self.field] += data

p = Page()
p.feed(open(sys.argv[1]).read())
st = json.load(open(sys.argv[2]))
errors = []
if int(p.ids.get("epoch", "-1")) != st["epoch"]:
    errors.append(f"epoch: page {p.ids.get('epoch')} vs status {st['epoch']}")
page_nodes = [r["node"] for r in p.rows]
status_nodes = [m["node"] for m in st["members"]]
if page_nodes != status_nodes:
    errors.append(f"members in ring order differ: {page_nodes} vs {status_nodes}")
for r, m in zip(p.rows, st["members"]):
    if (r["cells"][3].strip() == "yes") != m["ms"]:
        errors.append(f"MS flag of {m['short']} differs")
    if r["class"] != "ok" or not m["answer"]["ok"]:
        errors.append(f"{m['short']} does not answer (page: {r['class']}, status: {m['answer']})")
# The page's node is the one on the first gRPC port.
me = next((m for m in st["members"] if m["address"].endswith(":" + sys.argv[3])), None)
transfers = p.ids.get("transfers", "")
if me is None or me["status"].get("transfer_pending_ranges") != 0:
    errors.append(f"dbqs status shows ranges to take over on a static devnet: {me}")
elif not transfers.startswith("none: every range this node serves is taken over"):
    errors.append(f"Transfers section: {transfers!r}")
if not p.ids.get("transfer-ranges-done", "").strip().isdigit():
    errors.append("no transfer counters on the page")
changes = p.ids.get("changes", "")
if not changes.startswith("none"):
    errors.append(f"Recent membership changes on a static devnet: {changes!r}")
if errors:
    sys.exit("status page check failed:\n" + "\n".join(errors))
print(f"status page matches dbqs status: epoch {st['epoch']}, {len(page_nodes)} members, "
      f"{sum(m['ms'] for m in st['members'])} MS members, all answering, "
      f"no transfers, membership changes: {changes}")
PY
if [ "${SCREENSHOT:-0}" = 1 ]; then
  timeout 60 "${chrome[@]}" --window-size=1100,1150 --screenshot="$root/docs/status-page.png" "$url" >/dev/null 2>&1
  echo "screenshot: docs/status-page.png"
fi
