#!/usr/bin/env bash
# make-secrets.sh CLUSTER_DIR > FILE.yaml
#
# Writes the Kubernetes objects that hold a `dbqs genesis` directory, for the
# manifests beside this script (docs/kubernetes.md):
#   Secret    dbqs-node-keys  every node's folder: key nXX.FILE for
#                             CLUSTER_DIR/nodes/nXX/FILE (node.toml, node.key,
#                             x25519.key, tls.pem, tls.key, add.cert and, on
#                             the genesis MS members, ms-share.key); the
#                             StatefulSet maps nXX to pod dbqs-(XX-1)
#   ConfigMap dbqs-public     ca.pem, ms.pub, and as binaryData genesis.cert
#                             (the genesis configuration) and genesis.adds
#                             (every genesis member's AddCert, which the MS
#                             members' state machine starts from; an MS member
#                             refuses to start without it)
#   Secret    dbqs-client     client.toml and its files, for tools/status-job.yaml
# authority.key and ca.key are never included: they stay offline.
#
# Each node.toml is copied unchanged except data_dir, which becomes "/data"
# (the pod's PersistentVolumeClaim; the Secret volume is read-only). Before
# writing anything the script checks that the directory was made for exactly
# the nodes, addresses and port of services.yaml, listening on 0.0.0.0, and
# that genesis.adds holds exactly the nodes' add.cert files.
# All objects are immutable: a new genesis is a new cluster (delete and
# re-create them). Needs bash and python3 (standard library only).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ $# -ne 1 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  [ $# -eq 1 ] && exit 0
  exit 2
fi
if [ -t 1 ]; then
  echo "make-secrets.sh: refusing to print private keys to a terminal; redirect stdout to a file" >&2
  exit 2
fi
exec python3 - "$1" "$here/services.yaml" <<'PY'
import base64
import json
import os
import re
import sys

cluster, services_path = sys.argv[1], sys.argv[2]


def fail(msg):
    sys.stderr.write(f"make-secrets.sh: {msg}\n")
    sys.exit(1)


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        fail(f"{path}: {e.strerror}")


def toml_string(text, key, path):
    m = re.search(rf'^{key} = "([^"]*)"$', text, re.M)
    if not m:
        fail(f"{path}: no {key} = \"...\" line")
    return m.group(1)


# The node addresses that services.yaml fixes: Service dbqs-nXX -> clusterIP:port.
services = {}
for doc in re.split(r"^---\s*$", open(services_path).read(), flags=re.M):
    name = re.search(r"^  name: (dbqs-n(\d\d))\s*$", doc, re.M)
    if not name:
        continue
    ip = re.search(r"^  clusterIP: (\S+)\s*$", doc, re.M)
    port = re.search(r"^    - name: grpc\n      port: (\d+)\s*$", doc, re.M)
    if not ip or not port:
        fail(f"{services_path}: Service {name.group(1)} lacks clusterIP or grpc port")
    services[int(name.group(2))] = f"{ip.group(1)}:{port.group(1)}"
n = len(services)
if n == 0 or sorted(services) != list(range(1, n + 1)):
    fail(f"{services_path}: expected Services dbqs-n01..dbqs-nNN, found {sorted(services)}")
want = [services[i] for i in range(1, n + 1)]
port = want[0].rsplit(":", 1)[1]

for f in ("genesis.cert", "ca.pem", "ms.pub", "client.toml"):
    if not os.path.isfile(os.path.join(cluster, f)):
        fail(f"{cluster} is not a `dbqs genesis` directory: no {f}")
if not os.path.isfile(os.path.join(cluster, "genesis.adds")):
    fail(
        f"{cluster} has no genesis.adds (every genesis member's AddCert; the MS members "
        f"refuse to start without it)\n"
        f"  an incomplete copy, or made by a dbqs older than genesis.adds (then run a "
        f"current `dbqs genesis` for a new cluster directory)"
    )
nodes_dir = os.path.join(cluster, "nodes")
have = sorted(d for d in os.listdir(nodes_dir) if re.fullmatch(r"n\d\d", d)) if os.path.isdir(nodes_dir) else []
expected = [f"n{i:02d}" for i in range(1, n + 1)]
if have != expected:
    fail(f"{nodes_dir}: expected node folders {expected[0]}..{expected[-1]} ({n}, one per Service in services.yaml), found {have}")

client_toml = read(os.path.join(cluster, "client.toml")).decode()
m = re.search(r"^bootstrap = \[(.*)\]$", client_toml, re.M)
got = re.findall(r'"([^"]*)"', m.group(1)) if m else []
if got != want:
    fail(
        f"{cluster} was made for the addresses {','.join(got) or '(none)'}\n"
        f"  but services.yaml fixes {','.join(want)}\n"
        f"  run: dbqs genesis --dir NEW_DIR --listen-host 0.0.0.0 --f 1 --addresses {','.join(want)}"
    )
genesis_cert = read(os.path.join(cluster, "genesis.cert"))
for a in want:
    if a.encode() not in genesis_cert:
        fail(f"{cluster}/genesis.cert does not name address {a}; client.toml and genesis.cert disagree")

# genesis.adds: tag "dbqs.v1.genesis-adds" 0x00, u32 count (big-endian), then
# each AddCert as u32 length + encoding (dbqs_common::genesis::encode_adds).
genesis_adds = read(os.path.join(cluster, "genesis.adds"))
ADDS_TAG = b"dbqs.v1.genesis-adds\0"
adds = []
rest = genesis_adds[len(ADDS_TAG):] if genesis_adds.startswith(ADDS_TAG) else None
if rest is not None and len(rest) >= 4:
    count, rest = int.from_bytes(rest[:4], "big"), rest[4:]
    while rest is not None and len(adds) < count:
        ln = int.from_bytes(rest[:4], "big") if len(rest) >= 4 else None
        if ln is None or len(rest) < 4 + ln:
            rest = None
            break
        adds.append(rest[4:4 + ln])
        rest = rest[4 + ln:]
if rest is None or rest != b"" or len(adds) != n:
    fail(f"{cluster}/genesis.adds is not a genesis.adds of {n} AddCerts as `dbqs genesis` writes it")

NODE_FILES = ["node.toml", "node.key", "x25519.key", "tls.pem", "tls.key", "add.cert"]
node_data = {}
ms_members = []
for name in expected:
    d = os.path.join(nodes_dir, name)
    toml_path = os.path.join(d, "node.toml")
    text = read(toml_path).decode()
    listen = toml_string(text, "listen", toml_path)
    if listen != f"0.0.0.0:{port}":
        fail(f"{toml_path}: listen = {listen!r}; the pods need \"0.0.0.0:{port}\" (genesis --listen-host 0.0.0.0)")
    for key, val in (("ca_cert", "../../ca.pem"), ("config_cert", "../../genesis.cert")):
        if toml_string(text, key, toml_path) != val:
            fail(f"{toml_path}: {key} must be {val!r} for the pod layout of statefulset.yaml")
    for key in ("node_key", "x25519_key", "tls_cert", "tls_key"):
        v = toml_string(text, key, toml_path)
        if "/" in v:
            fail(f"{toml_path}: {key} = {v!r} must name a file in the node's own folder")
    if toml_string(text, "data_dir", toml_path) != "data":
        fail(f"{toml_path}: data_dir is not \"data\"; not a node.toml as `dbqs genesis` writes it")
    text = re.sub(r'^data_dir = "data"$', 'data_dir = "/data"', text, count=1, flags=re.M)
    files = {"node.toml": text.encode()}
    for f in NODE_FILES[1:]:
        files[f] = read(os.path.join(d, f))
    share = re.search(r'^ms_share = "([^"]*)"$', text, re.M)
    if share:
        if share.group(1) != "ms-share.key":
            fail(f"{toml_path}: ms_share = {share.group(1)!r}, expected \"ms-share.key\"")
        files["ms-share.key"] = read(os.path.join(d, "ms-share.key"))
        ms_members.append(name)
    elif os.path.exists(os.path.join(d, "ms-share.key")):
        fail(f"{d}: ms-share.key present but node.toml does not use it")
    if files["add.cert"] not in adds:
        fail(f"{cluster}/genesis.adds lacks {name}'s add.cert: they come from different genesis runs")
    node_data[name] = files
if not ms_members:
    fail(f"{cluster}: no node holds an MS key share")


def b64(data):
    return base64.b64encode(data).decode()


def q(s):
    return json.dumps(s)  # a JSON string is a valid double-quoted YAML scalar


out = []
out.append(
    f"# Generated by deploy/k8s/make-secrets.sh from {q(os.path.abspath(cluster))}.\n"
    f"# CONTAINS EVERY NODE'S PRIVATE KEYS: keep it with the cluster directory, never in git.\n"
    f"# Nodes {expected[0]}..{expected[-1]} at {want[0]}..{want[-1]}; MS members {', '.join(ms_members)}.\n"
)
labels = "  labels:\n    app.kubernetes.io/name: dbqs\n"
out.append("---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: dbqs-node-keys\n" + labels)
out.append("type: Opaque\nimmutable: true\ndata:\n")
for name in expected:
    for f, data in node_data[name].items():
        out.append(f"  {name}.{f}: {b64(data)}\n")

pub = {f: read(os.path.join(cluster, f)) for f in ("ca.pem", "ms.pub")}
out.append("---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: dbqs-public\n" + labels)
out.append("immutable: true\ndata:\n")
for f, data in pub.items():
    out.append(f"  {f}: {q(data.decode())}\n")
out.append(f"binaryData:\n  genesis.cert: {b64(genesis_cert)}\n  genesis.adds: {b64(genesis_adds)}\n")

client_files = {
    "client.toml": client_toml.encode(),
    "ca.pem": pub["ca.pem"],
    "genesis.cert": genesis_cert,
}
for f in ("tls.pem", "tls.key", "owner.key", "client.cert"):
    client_files[f"client.{f}"] = read(os.path.join(cluster, "client", f))
out.append("---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: dbqs-client\n" + labels)
out.append("type: Opaque\nimmutable: true\ndata:\n")
for f, data in client_files.items():
    out.append(f"  {f}: {b64(data)}\n")

sys.stdout.write("".join(out))
sys.stderr.write(
    f"make-secrets.sh: {n} nodes ({want[0]}..{want[-1]}), MS members {', '.join(ms_members)}; "
    f"Secrets dbqs-node-keys, dbqs-client and ConfigMap dbqs-public written\n"
)
PY
