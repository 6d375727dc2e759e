#!/usr/bin/env python3
"""Static checks of deploy/k8s against deploy/compose.yaml, the Dockerfile and
docs/kubernetes.md (CI cannot run Kubernetes). Run through check.sh, which
provides PyYAML in target/py-venv.

Checks: every manifest parses and names its kind; the StatefulSet runs as many
nodes as compose.yaml, with the same image, port and `dbqs-server run --config`
/ `dbqs-server health --config` commands; every volume mount names a defined
volume, and every Secret/ConfigMap key a volume uses is one make-secrets.sh
writes (make-secrets.sh is run on a fresh `dbqs genesis` directory, or on a
fixture shaped like one when no dbqs binary is built); the node.toml paths
resolve to the mounts (data dir, ca.pem, genesis.cert, and on MS members the
genesis.adds beside genesis.cert), and those mounts carry the genesis
directory's own ca.pem, genesis.cert and genesis.adds; key files are mounted
0400/0600 without fsGroup; one ClusterIP Service per node with a fixed IP
selecting the right pod, and those IPs:port are exactly the `dbqs genesis
--addresses` of docs/kubernetes.md; the PodDisruptionBudget allows 1 pod down.

    check.py [--k8s DIR] [--compose FILE] [--dockerfile FILE] [--doc FILE]
             [--dbqs BIN | --no-genesis] [--self-test]

--self-test also breaks copies of the manifests in known ways and fails unless
the check catches every one. Exit status 0 when everything is consistent, 1
with one line per problem otherwise.
"""

import argparse
import base64
import ipaddress
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
NODE_FILES = ["node.toml", "node.key", "x25519.key", "tls.pem", "tls.key", "add.cert"]
KEY_FILES = {"node.key", "x25519.key", "tls.key", "ms-share.key"}


class Checker:
    def __init__(self, k8s, compose, dockerfile, doc, cluster_dir):
        self.k8s, self.compose, self.dockerfile, self.doc = k8s, compose, dockerfile, doc
        self.cluster_dir = cluster_dir
        self.errors = []

    def err(self, msg):
        self.errors.append(msg)

    # ---------------------------------------------------------------- inputs

    def load_manifests(self):
        self.objects = []
        paths = []
        for d, _, files in os.walk(self.k8s):
            paths += [os.path.join(d, f) for f in files if f.endswith((".yaml", ".yml"))]
        if not paths:
            self.err(f"{self.k8s}: no manifests")
        for p in sorted(paths):
            rel = os.path.relpath(p, self.k8s)
            try:
                docs = list(yaml.safe_load_all(open(p)))
            except yaml.YAMLError as e:
                self.err(f"{rel}: does not parse: {e}")
                continue
            for doc in docs:
                if doc is None:
                    continue
                if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind"):
                    self.err(f"{rel}: a document without apiVersion/kind")
                    continue
                name = (doc.get("metadata") or {}).get("name")
                if not name:
                    self.err(f"{rel}: {doc['kind']} without metadata.name")
                    continue
                if (doc.get("metadata") or {}).get("namespace"):
                    self.err(f"{rel}: {doc['kind']}/{name} sets a namespace; apply with -n instead")
                self.objects.append((rel, doc))

    def of_kind(self, kind):
        return [(rel, o) for rel, o in self.objects if o["kind"] == kind]

    def load_compose(self):
        text = open(self.compose).read()
        c = yaml.safe_load(text)
        svcs = {k: v for k, v in (c.get("services") or {}).items() if re.fullmatch(r"n\d\d", k)}
        self.c_nodes = sorted(svcs)
        if not svcs:
            self.err("compose.yaml: no nXX services")
            self.c_image, self.c_ports = None, set()
            return
        images = set()
        for name, s in svcs.items():
            img = str(s.get("image", ""))
            m = re.fullmatch(r"\$\{[A-Za-z_]+:-([^}]+)\}", img)
            images.add(m.group(1) if m else img)
            cmd = s.get("command") or []
            if cmd[:2] != ["run", "--config"]:
                self.err(f"compose.yaml: {name}: command is not `run --config ...`")
            test = (s.get("healthcheck") or {}).get("test") or []
            if test[:3] != ["CMD", "/dbqs-server", "health"]:
                self.err(f"compose.yaml: {name}: healthcheck is not /dbqs-server health")
        if len(images) != 1:
            self.err(f"compose.yaml: nodes use several images {sorted(images)}")
        self.c_image = sorted(images)[0]
        ports = {int(p) for p in re.findall(r"\d+\.\d+\.\d+\.\d+:(\d+)", text)}
        df = open(self.dockerfile).read()
        ports |= {int(p) for p in re.findall(r"^EXPOSE\s+(\d+)", df, re.M)}
        self.entrypoint = re.findall(r'^ENTRYPOINT\s+\["([^"]+)"', df, re.M)
        self.image_files = set(re.findall(r"^COPY\s+\S+\s+(\S+)", df, re.M))
        if len(ports) != 1:
            self.err(f"compose.yaml/Dockerfile: node port is not one value: {sorted(ports)}")
        self.c_port = min(ports) if ports else None

    def load_doc(self):
        try:
            text = open(self.doc).read()
        except OSError as e:
            self.err(f"{self.doc}: {e.strerror}")
            self.doc_addresses = []
            return
        text = text.replace("\\\n", " ")
        cmds = [ln for ln in text.splitlines() if re.search(r"\bdbqs\S* genesis\b", ln) and "--addresses" in ln]
        if not cmds:
            self.err("docs/kubernetes.md: no `dbqs genesis ... --addresses ...` command")
        lists = []
        for c in cmds:
            m = re.search(r"--addresses[ =](\S+)", c)
            lists.append(m.group(1).split(",") if m else [])
            if not re.search(r"--listen-host[ =]0\.0\.0\.0\b", c):
                self.err(f"docs/kubernetes.md: genesis command without --listen-host 0.0.0.0: {c.strip()}")
        if any(l != lists[0] for l in lists):
            self.err("docs/kubernetes.md: the genesis commands give different --addresses")
        self.doc_addresses = lists[0] if lists else []

    # ---------------------------------------------------------------- checks

    def check(self):
        self.load_manifests()
        self.load_compose()
        self.load_doc()
        n = len(self.c_nodes)
        port = self.c_port

        stss = self.of_kind("StatefulSet")
        if len(stss) != 1:
            self.err(f"expected one StatefulSet, found {len(stss)}")
            return self.errors
        rel, sts = stss[0]
        spec = sts.get("spec") or {}
        tmpl = spec.get("template") or {}
        labels = (tmpl.get("metadata") or {}).get("labels") or {}
        pod = tmpl.get("spec") or {}
        name = sts["metadata"]["name"]

        if spec.get("replicas") != n:
            self.err(f"{rel}: replicas = {spec.get('replicas')}, compose.yaml runs {n} nodes")
        if not self.subset((spec.get("selector") or {}).get("matchLabels"), labels):
            self.err(f"{rel}: selector does not match the pod template labels")
        for psc_key in ("fsGroup",):
            if psc_key in (pod.get("securityContext") or {}):
                self.err(f"{rel}: pod securityContext sets {psc_key}: Secret files would become group-readable and dbqs-server refuses them")
        if (pod.get("securityContext") or {}).get("runAsNonRoot"):
            self.err(f"{rel}: runAsNonRoot: the Secret files are root-owned 0400 and the image has no USER")
        for term in (((pod.get("affinity") or {}).get("podAntiAffinity") or {}).get(
                "requiredDuringSchedulingIgnoredDuringExecution") or []):
            if not self.subset((term.get("labelSelector") or {}).get("matchLabels"), labels):
                self.err(f"{rel}: podAntiAffinity selector does not match the pods")

        vols = {v.get("name"): v for v in pod.get("volumes") or []}
        claims = {(c.get("metadata") or {}).get("name"): c for c in spec.get("volumeClaimTemplates") or []}
        for cname, c in claims.items():
            if cname in vols:
                self.err(f"{rel}: volume {cname} is both a volume and a claim template")
            if not (((c.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage"):
                self.err(f"{rel}: claim template {cname} requests no storage")
        containers = pod.get("containers") or []
        if len(containers) != 1:
            self.err(f"{rel}: expected one container, found {len(containers)}")
            return self.errors
        ctr = containers[0]
        if ctr.get("image") != self.c_image:
            self.err(f"{rel}: image {ctr.get('image')!r}, compose.yaml uses {self.c_image!r}")
        if ctr.get("imagePullPolicy") not in ("Never", "IfNotPresent"):
            self.err(f"{rel}: imagePullPolicy must be Never or IfNotPresent (the image is built locally)")
        if ctr.get("command") not in (None, self.entrypoint):
            self.err(f"{rel}: command overrides the image ENTRYPOINT {self.entrypoint}")
        args = ctr.get("args") or []
        if len(args) != 3 or args[:2] != ["run", "--config"]:
            self.err(f"{rel}: args must be [run, --config, NODE.toml], got {args}")
            return self.errors
        config = args[2]
        # Readiness follows the lease; startup and liveness only ask whether the
        # process answers (--live), so an MS outage does not restart every pod.
        ready = ["/dbqs-server", "health", "--config", config]
        live = ["/dbqs-server", "health", "--live", "--config", config]
        for probe, health in (("startupProbe", live), ("readinessProbe", ready), ("livenessProbe", live)):
            cmd = ((ctr.get(probe) or {}).get("exec") or {}).get("command")
            if cmd is None:
                self.err(f"{rel}: no exec {probe}")
            elif cmd[:len(health)] != health:
                self.err(f"{rel}: {probe} runs {cmd}, expected {health} (no shell in the image)")
        grpc_ports = [p for p in ctr.get("ports") or [] if p.get("name") == "grpc"]
        if len(grpc_ports) != 1 or grpc_ports[0].get("containerPort") != port:
            self.err(f"{rel}: container port grpc must be {port} (compose.yaml/Dockerfile)")
        env = {e.get("name"): e for e in ctr.get("env") or []}
        mounts = self.check_mounts(rel, ctr, vols, claims, env)

        # The per-pod folder: a Secret volume mounted at dirname(config) by pod name.
        conf_dir = posixpath.dirname(config)
        m = mounts.get(conf_dir)
        if not m or not m.get("subPathExpr"):
            self.err(f"{rel}: nothing mounts the node folder {conf_dir} per pod (subPathExpr)")
            node_vol = None
        else:
            var = re.fullmatch(r"\$\((\w+)\)", m["subPathExpr"])
            ref = ((env.get(var.group(1)) or {}).get("valueFrom") or {}).get("fieldRef", {}) if var else {}
            if ref.get("fieldPath") != "metadata.name":
                self.err(f"{rel}: subPathExpr of {conf_dir} must be $(VAR) with VAR the pod name (fieldRef metadata.name)")
            node_vol = vols.get(m["name"])
        data_mount = next((p for p, mm in mounts.items() if mm["name"] in claims), None)
        if data_mount is None:
            self.err(f"{rel}: no mount of the volume claim template (the data dir)")

        self.check_services(name, spec, labels, port, n)
        self.check_pdb(labels, spec)

        generated = self.run_make_secrets()
        self.check_sources(rel, pod, generated)
        for jrel, job in self.of_kind("Job"):
            jpod = ((job.get("spec") or {}).get("template") or {}).get("spec") or {}
            jvols = {v.get("name"): v for v in jpod.get("volumes") or []}
            for c in jpod.get("containers") or []:
                if c.get("image") != self.c_image:
                    self.err(f"{jrel}: image {c.get('image')!r}, expected {self.c_image!r}")
                if c.get("command") and c["command"][0] not in self.image_files:
                    self.err(f"{jrel}: {c['command'][0]} is not in the image")
                self.check_mounts(jrel, c, jvols, {}, {e.get("name"): e for e in c.get("env") or []})
            self.check_sources(jrel, jpod, generated)
        if node_vol is not None and generated is not None:
            self.check_node_files(rel, node_vol, config, mounts, vols, data_mount, port, n, generated)
        return self.errors

    @staticmethod
    def subset(sel, labels):
        return bool(sel) and all(labels.get(k) == v for k, v in sel.items())

    def check_mounts(self, rel, ctr, vols, claims, env):
        mounts = {}
        for m in ctr.get("volumeMounts") or []:
            if m.get("name") not in vols and m.get("name") not in claims:
                self.err(f"{rel}: volumeMount {m.get('mountPath')} names undefined volume {m.get('name')!r}")
            for var in re.findall(r"\$\((\w+)\)", m.get("subPathExpr", "")):
                if var not in env:
                    self.err(f"{rel}: subPathExpr uses undefined env var {var}")
            if m.get("mountPath") in mounts:
                self.err(f"{rel}: two mounts at {m.get('mountPath')}")
            mounts[m.get("mountPath")] = m
        # A mount inside a read-only Secret/ConfigMap mount needs a mount point
        # the runtime cannot create.
        for p, m in mounts.items():
            for q, outer in mounts.items():
                v = vols.get(outer["name"]) or {}
                if p != q and p.startswith(q.rstrip("/") + "/") and ("secret" in v or "configMap" in v or "projected" in v):
                    self.err(f"{rel}: {p} is mounted inside the read-only volume mounted at {q}")
        return mounts

    def check_services(self, sts_name, spec, labels, port, n):
        svcs = self.of_kind("Service")
        headless = [(r, s) for r, s in svcs if (s.get("spec") or {}).get("clusterIP") == "None"]
        gov = [(r, s) for r, s in headless if s["metadata"]["name"] == spec.get("serviceName")]
        if not gov:
            self.err(f"StatefulSet serviceName {spec.get('serviceName')!r} is not a headless Service")
        for r, s in gov:
            if not self.subset((s.get("spec") or {}).get("selector"), labels):
                self.err(f"{r}: headless Service {s['metadata']['name']} does not select the pods")
        per_node = {}
        for r, s in svcs:
            m = re.fullmatch(rf"{re.escape(sts_name)}-n(\d\d)", s["metadata"]["name"])
            if m:
                per_node[int(m.group(1))] = (r, s)
        if sorted(per_node) != list(range(1, n + 1)):
            self.err(f"per-node Services: expected {sts_name}-n01..{sts_name}-n{n:02d}, found "
                     f"{[f'{sts_name}-n{i:02d}' for i in sorted(per_node)]}")
        addrs = []
        for i in sorted(per_node):
            r, s = per_node[i]
            sp = s.get("spec") or {}
            sname = s["metadata"]["name"]
            ip = sp.get("clusterIP")
            try:
                ipaddress.IPv4Address(ip)
            except (ipaddress.AddressValueError, ValueError):
                self.err(f"{r}: {sname} needs a fixed IPv4 clusterIP (the static binary cannot resolve names), has {ip!r}")
            sel = dict(sp.get("selector") or {})
            want_pod = f"{sts_name}-{i - 1}"
            if sel.pop("statefulset.kubernetes.io/pod-name", None) != want_pod:
                self.err(f"{r}: {sname} must select pod {want_pod} (statefulset.kubernetes.io/pod-name)")
            if sel and not self.subset(sel, labels):
                self.err(f"{r}: {sname} selector {sel} does not match the pod labels")
            ports = sp.get("ports") or []
            if len(ports) != 1 or ports[0].get("port") != port or ports[0].get("targetPort") not in (port, "grpc"):
                self.err(f"{r}: {sname} must expose port {port} to the pod's grpc port")
            addrs.append(f"{ip}:{port}")
        if len(set(addrs)) != len(addrs):
            self.err(f"per-node Services share clusterIPs: {addrs}")
        if addrs != self.doc_addresses:
            self.err("docs/kubernetes.md tells `dbqs genesis --addresses` "
                     f"{','.join(self.doc_addresses) or '(nothing)'}\n  but the per-node Services are at {','.join(addrs)}")
        if len(self.doc_addresses) != n:
            self.err(f"docs/kubernetes.md: genesis gets {len(self.doc_addresses)} addresses, compose.yaml runs {n} nodes")
        self.addresses = addrs

    def check_pdb(self, labels, spec):
        pdbs = self.of_kind("PodDisruptionBudget")
        if len(pdbs) != 1:
            self.err(f"expected one PodDisruptionBudget, found {len(pdbs)}")
            return
        r, p = pdbs[0]
        sp = p.get("spec") or {}
        if p.get("apiVersion") != "policy/v1":
            self.err(f"{r}: apiVersion must be policy/v1")
        mu = sp.get("maxUnavailable")
        if mu != 1 or isinstance(mu, bool):
            self.err(f"{r}: maxUnavailable is {mu!r}; f = 1 allows exactly 1 node down")
        if "minAvailable" in sp:
            self.err(f"{r}: sets minAvailable; use maxUnavailable: 1 only")
        sel = (sp.get("selector") or {}).get("matchLabels")
        if not self.subset(sel, labels) or sel != (spec.get("selector") or {}).get("matchLabels"):
            self.err(f"{r}: selector must be the StatefulSet's selector")

    # ----------------------------------------------- generated Secrets/ConfigMap

    def run_make_secrets(self):
        script = os.path.join(self.k8s, "make-secrets.sh")
        with tempfile.TemporaryFile() as out:
            p = subprocess.run(["bash", script, self.cluster_dir], stdout=out, stderr=subprocess.PIPE)
            out.seek(0)
            text = out.read().decode()
        if p.returncode != 0:
            self.err(f"make-secrets.sh failed on a genesis for the documented addresses: {p.stderr.decode().strip()}")
            return None
        gen = {}
        for doc in yaml.safe_load_all(text):
            if doc:
                gen[(doc["kind"], doc["metadata"]["name"])] = doc
        for (kind, name), doc in gen.items():
            if kind == "Secret" and not doc.get("immutable"):
                self.err(f"make-secrets.sh: Secret {name} is not immutable")
            for v in (doc.get("data") or {}).values():
                if kind == "Secret":
                    base64.b64decode(v, validate=True)
        return gen

    def keys_of(self, gen, kind, name):
        doc = gen.get((kind, name))
        if doc is None:
            return None
        return set(doc.get("data") or {}) | set(doc.get("binaryData") or {})

    def check_sources(self, rel, pod, gen):
        if gen is None:
            return
        for v in pod.get("volumes") or []:
            for kind, field, namekey in (("Secret", "secret", "secretName"), ("ConfigMap", "configMap", "name")):
                src = v.get(field)
                if src is None:
                    continue
                keys = self.keys_of(gen, kind, src.get(namekey))
                if keys is None:
                    self.err(f"{rel}: volume {v['name']} uses {kind} {src.get(namekey)!r}, which make-secrets.sh does not write")
                    continue
                if kind == "Secret":
                    mode = src.get("defaultMode")
                    if mode is None or mode & 0o077 or not mode & 0o400:
                        self.err(f"{rel}: volume {v['name']}: defaultMode must be 0400 or 0600 (dbqs refuses readable keys)")
                for it in src.get("items") or []:
                    if "mode" in it and it["mode"] & 0o077:
                        self.err(f"{rel}: item {it.get('key')} has a group/other-readable mode")
                    if it.get("key") not in keys:
                        optional_share = src.get("optional") and it.get("key", "").endswith(".ms-share.key")
                        if not optional_share:
                            self.err(f"{rel}: volume {v['name']} maps key {it.get('key')!r}, missing from {kind} {src.get(namekey)}")
                for c in pod.get("containers") or []:
                    for m in c.get("volumeMounts") or []:
                        if m.get("name") == v["name"] and m.get("subPath"):
                            paths = {it.get("path") for it in src.get("items") or []} or keys
                            if m["subPath"] not in paths:
                                self.err(f"{rel}: mount {m.get('mountPath')} uses subPath {m['subPath']!r}, not in {kind} {src.get(namekey)}")

    @staticmethod
    def mounted_bytes(m, vols, gen):
        """The bytes a subPath mount of a generated Secret/ConfigMap shows, or None."""
        v = vols.get(m.get("name")) or {}
        for kind, field, namekey in (("Secret", "secret", "secretName"), ("ConfigMap", "configMap", "name")):
            src = v.get(field)
            if src is None:
                continue
            doc = gen.get((kind, src.get(namekey))) or {}
            items = src.get("items")
            key = next((it.get("key") for it in items if it.get("path") == m.get("subPath")), None) if items else m.get("subPath")
            data, binary = doc.get("data") or {}, doc.get("binaryData") or {}
            if key in binary:
                return base64.b64decode(binary[key])
            if key in data:
                return base64.b64decode(data[key]) if kind == "Secret" else str(data[key]).encode()
        return None

    def check_node_files(self, rel, vol, config, mounts, vols, data_mount, port, n, gen):
        src = vol.get("secret")
        if src is None:
            self.err(f"{rel}: the node folder volume {vol.get('name')} is not a Secret")
            return
        data = (gen.get(("Secret", src.get("secretName"))) or {}).get("data") or {}
        items = {it.get("path"): it.get("key") for it in src.get("items") or []}
        base = os.path.basename(config)
        sts_name = None
        for _, s in self.of_kind("StatefulSet"):
            sts_name = s["metadata"]["name"]
        mounted_files = {p: m for p, m in mounts.items() if m.get("subPath")}
        for i in range(n):
            pod, node = f"{sts_name}-{i}", f"n{i + 1:02d}"
            for f in NODE_FILES + ["ms-share.key"]:
                if items.get(f"{pod}/{f}") != f"{node}.{f}":
                    self.err(f"{rel}: Secret item for {pod}/{f} must be key {node}.{f} (cluster/nodes/{node}/{f})")
            key = items.get(f"{pod}/{base}")
            if key not in data:
                continue
            text = base64.b64decode(data[key]).decode()
            fields = dict(re.findall(r'^(\w+) = "([^"]*)"$', text, re.M))
            conf_dir = posixpath.dirname(config)

            def resolve(p):
                return posixpath.normpath(posixpath.join(conf_dir, p))

            if fields.get("listen") != f"0.0.0.0:{port}":
                self.err(f"{node}.node.toml: listen {fields.get('listen')!r}, expected 0.0.0.0:{port}")
            if data_mount and resolve(fields.get("data_dir", "")) != data_mount:
                self.err(f"{node}.node.toml: data_dir {fields.get('data_dir')!r} is not the data volume {data_mount}")
            public = [("ca_cert", resolve(fields.get("ca_cert", "")), "ca.pem"),
                      ("config_cert", resolve(fields.get("config_cert", "")), "genesis.cert")]
            if "ms_share" in fields:
                # An MS member reads genesis.adds from beside its config_cert
                # (dbqs-server node.rs) and refuses to start without it.
                public.append(("genesis.adds beside config_cert",
                               posixpath.join(posixpath.dirname(public[1][1]), "genesis.adds"), "genesis.adds"))
            for k, target, genesis_file in public:
                if target not in mounted_files:
                    self.err(f"{node}.node.toml: {k} resolves to {target}, which nothing mounts")
                    continue
                want = open(os.path.join(self.cluster_dir, genesis_file), "rb").read()
                if self.mounted_bytes(mounted_files[target], vols, gen) != want:
                    self.err(f"{rel}: {target} (for {node}'s {k}) does not carry the genesis directory's {genesis_file}")
            for k in ("node_key", "x25519_key", "tls_cert", "tls_key", "ms_share"):
                if k in fields:
                    f = fields[k]
                    if posixpath.dirname(resolve(f)) != conf_dir or f"{pod}/{f}" not in items:
                        self.err(f"{node}.node.toml: {k} {f!r} is not a file of the pod's Secret folder")
                    elif items[f"{pod}/{f}"] not in data:
                        self.err(f"{node}.node.toml: {k} {f!r} but make-secrets.sh wrote no {items[f'{pod}/{f}']}")
            share_key = f"{node}.ms-share.key"
            if (share_key in data) != ("ms_share" in fields):
                self.err(f"{node}: ms-share.key present in the Secret iff node.toml names it")
        nms = sum(1 for k in data if k.endswith(".ms-share.key"))
        if nms == 0:
            self.err("make-secrets.sh: no node got an MS key share")


# -------------------------------------------------------------- cluster dirs

def find_dbqs():
    tdir = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    for p in ("release/dbqs", "x86_64-unknown-linux-gnu/release/dbqs", "debug/dbqs"):
        p = os.path.join(tdir, p)
        if os.access(p, os.X_OK):
            return p
    return None


def genesis_dir(dbqs, addresses, where):
    d = os.path.join(where, "cluster")
    if dbqs:
        subprocess.run([dbqs, "genesis", "--dir", d, "--listen-host", "0.0.0.0", "--f", "1",
                        "--addresses", ",".join(addresses)], check=True, stdout=subprocess.DEVNULL)
        return d, f"`{os.path.relpath(dbqs, ROOT)} genesis`"
    # A directory shaped like a genesis (same files, node.toml and client.toml
    # as dbqs writes them; the keys are dummies).
    def w(path, data, mode=0o644):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode())
        os.chmod(path, mode)
    ms = "ab" * 48
    w(f"{d}/ca.pem", "-----BEGIN CERTIFICATE-----\nZml4dHVyZQ==\n-----END CERTIFICATE-----\n")
    w(f"{d}/ms.pub", ms + "\n")
    w(f"{d}/genesis.cert", b"\x00fixture\x00" + b"\x00".join(a.encode() for a in addresses))
    for f in ("owner.key", "tls.key"):
        w(f"{d}/client/{f}", "00" * 32 + "\n", 0o600)
    w(f"{d}/client/tls.pem", "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    w(f"{d}/client/client.cert", b"\x01")
    # genesis.adds as dbqs_common::genesis::encode_adds writes it: tag, u32
    # count, then each node's add.cert with a u32 length (all big-endian).
    adds = [b"\x02fixture-add-" + a.encode() for a in addresses]
    w(f"{d}/genesis.adds", b"dbqs.v1.genesis-adds\0" + len(adds).to_bytes(4, "big")
      + b"".join(len(x).to_bytes(4, "big") + x for x in adds))
    boot = ", ".join(f'"{a}"' for a in addresses)
    w(f"{d}/client.toml", f'ms_public_key = "{ms}"\nconfig_cert = "genesis.cert"\nca_cert = "ca.pem"\n'
      f'tls_cert = "client/tls.pem"\ntls_key = "client/tls.key"\nowner_key = "client/owner.key"\n'
      f"timeout_ms = 5000\nbootstrap = [{boot}]\n")
    for i, a in enumerate(addresses):
        nd = f"{d}/nodes/n{i + 1:02d}"
        for f in ("node.key", "x25519.key", "tls.key"):
            w(f"{nd}/{f}", "00" * 32 + "\n", 0o600)
        w(f"{nd}/tls.pem", "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
        w(f"{nd}/add.cert", b"\x02fixture-add-" + a.encode())
        share = ""
        if i % 2 == 1:
            w(f"{nd}/ms-share.key", f"{i // 2} " + "00" * 32 + "\n", 0o600)
            share = 'ms_share = "ms-share.key"\n'
        port = a.rsplit(":", 1)[1]
        w(f"{nd}/node.toml", f'listen = "0.0.0.0:{port}"\ndata_dir = "data"\nnode_key = "node.key"\n'
          f'x25519_key = "x25519.key"\ntls_cert = "tls.pem"\ntls_key = "tls.key"\nca_cert = "../../ca.pem"\n'
          f'config_cert = "../../genesis.cert"\nms_public_key = "{ms}"\n{share}')
    return d, "a fixture shaped like a genesis directory (no dbqs binary built)"


# ------------------------------------------------------------------ self-test

MUTATIONS = [
    ("replicas 7", "statefulset.yaml", "replicas: 8", "replicas: 7"),
    ("another image", "statefulset.yaml", "image: dbqs:dev", "image: dbqs:latest"),
    ("pull policy Always", "statefulset.yaml", "imagePullPolicy: IfNotPresent", "imagePullPolicy: Always"),
    ("wrong port", "statefulset.yaml", "containerPort: 7101", "containerPort: 7100"),
    ("probe through a shell", "statefulset.yaml",
     'command: ["/dbqs-server", "health", "--live", "--config", "/cluster/nodes/self/node.toml"]\n            periodSeconds: 10',
     'command: ["/bin/sh", "-c", "/dbqs-server health"]\n            periodSeconds: 10'),
    ("liveness that needs a lease (an MS outage would restart every pod)", "statefulset.yaml",
     'command: ["/dbqs-server", "health", "--live", "--config", "/cluster/nodes/self/node.toml"]\n            periodSeconds: 10',
     'command: ["/dbqs-server", "health", "--config", "/cluster/nodes/self/node.toml"]\n            periodSeconds: 10'),
    ("mount of an undefined volume", "statefulset.yaml", "- name: data\n              mountPath: /data",
     "- name: store\n              mountPath: /data"),
    ("Secret not written by make-secrets.sh", "statefulset.yaml", "secretName: dbqs-node-keys", "secretName: dbqs-keys"),
    ("world-readable keys", "statefulset.yaml", "defaultMode: 0400", "defaultMode: 0444"),
    ("fsGroup", "statefulset.yaml", "runAsGroup: 0\n        seccompProfile", "runAsGroup: 0\n        fsGroup: 1000\n        seccompProfile"),
    ("node folder at another path", "statefulset.yaml", "mountPath: /cluster/nodes/self\n", "mountPath: /cluster/node\n"),
    ("ca.pem elsewhere", "statefulset.yaml", "mountPath: /cluster/ca.pem", "mountPath: /etc/ca.pem"),
    ("genesis.adds not mounted", "statefulset.yaml",
     "            - name: public\n              mountPath: /cluster/genesis.adds\n              subPath: genesis.adds\n", ""),
    ("genesis.adds mounted from the genesis.cert key", "statefulset.yaml",
     "mountPath: /cluster/genesis.adds\n              subPath: genesis.adds", "mountPath: /cluster/genesis.adds\n              subPath: genesis.cert"),
    ("data dir elsewhere", "statefulset.yaml", "mountPath: /data", "mountPath: /var/lib/dbqs"),
    ("items swapped", "statefulset.yaml", "{key: n02.node.toml, path: dbqs-1/node.toml}", "{key: n03.node.toml, path: dbqs-1/node.toml}"),
    ("pdb maxUnavailable 2", "pdb.yaml", "maxUnavailable: 1", "maxUnavailable: 2"),
    ("pdb as a percentage", "pdb.yaml", "maxUnavailable: 1", 'maxUnavailable: "12%"'),
    ("service IP differs from the docs", "services.yaml", "clusterIP: 10.96.0.215", "clusterIP: 10.96.0.225"),
    ("service selects the wrong pod", "services.yaml", "pod-name: dbqs-3", "pod-name: dbqs-4"),
    ("a node service missing", "services.yaml", "name: dbqs-n08", "name: dbqs-x08"),
    ("not parseable", "pdb.yaml", "spec:", "spec: ["),
    ("job mounts a Secret key that does not exist", "tools/status-job.yaml", "{key: client.toml,", "{key: client.conf,"),
]


def self_test(args, cluster_dir):
    failures = 0
    base = Checker(args.k8s, args.compose, args.dockerfile, args.doc, cluster_dir).check()
    if base:
        print("self-test: the unbroken manifests do not pass; fix them first")
        return 1
    for desc, rel, old, new in MUTATIONS + [("docs genesis addresses", "@doc", "10.96.0.213:7101", "10.96.0.219:7101")]:
        with tempfile.TemporaryDirectory() as t:
            k8s = os.path.join(t, "k8s")
            shutil.copytree(args.k8s, k8s)
            doc = os.path.join(t, "kubernetes.md")
            shutil.copy(args.doc, doc)
            path = doc if rel == "@doc" else os.path.join(k8s, rel)
            text = open(path).read()
            if old not in text:
                print(f"self-test: cannot apply mutation {desc!r}: {old!r} not in {rel}")
                failures += 1
                continue
            open(path, "w").write(text.replace(old, new))
            errs = Checker(k8s, args.compose, args.dockerfile, doc, cluster_dir).check()
            if errs:
                print(f"self-test: caught {desc}: {errs[0].splitlines()[0]}")
            else:
                print(f"self-test: NOT CAUGHT: {desc}")
                failures += 1
    # make-secrets.sh must refuse a genesis for other addresses (the compose ones).
    with tempfile.TemporaryDirectory() as t:
        other = [f"172.28.0.{10 + i}:{args.port}" for i in range(1, len(args.addresses) + 1)]
        d, _ = genesis_dir(args.dbqs, other, t)
        p = subprocess.run(["bash", os.path.join(args.k8s, "make-secrets.sh"), d],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if p.returncode == 0:
            print("self-test: NOT CAUGHT: make-secrets.sh accepted a genesis for the compose addresses")
            failures += 1
        else:
            print(f"self-test: caught genesis for other addresses: {p.stderr.decode().splitlines()[0]}")
    # ... and a cluster directory without genesis.adds (the MS members could not start).
    with tempfile.TemporaryDirectory() as t:
        d = os.path.join(t, "cluster")
        shutil.copytree(cluster_dir, d)
        os.remove(os.path.join(d, "genesis.adds"))
        p = subprocess.run(["bash", os.path.join(args.k8s, "make-secrets.sh"), d],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if p.returncode == 0:
            print("self-test: NOT CAUGHT: make-secrets.sh accepted a cluster directory without genesis.adds")
            failures += 1
        else:
            print(f"self-test: caught cluster directory without genesis.adds: {p.stderr.decode().splitlines()[0]}")
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k8s", default=os.path.join(ROOT, "deploy", "k8s"))
    ap.add_argument("--compose", default=os.path.join(ROOT, "deploy", "compose.yaml"))
    ap.add_argument("--dockerfile", default=os.path.join(ROOT, "deploy", "Dockerfile"))
    ap.add_argument("--doc", default=os.path.join(ROOT, "docs", "kubernetes.md"))
    ap.add_argument("--dbqs", default=os.environ.get("DBQS_BIN") or find_dbqs())
    ap.add_argument("--no-genesis", action="store_true", help="use the fixture even when a dbqs binary exists")
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args()
    if args.no_genesis:
        args.dbqs = None

    # The genesis is made for the addresses the docs give (the check then
    # compares them with the Services); fall back to the Services' own.
    pre = Checker(args.k8s, args.compose, args.dockerfile, args.doc, None)
    pre.load_doc()
    args.addresses = pre.doc_addresses
    pre.load_compose()
    args.port = pre.c_port
    with tempfile.TemporaryDirectory() as t:
        if not args.addresses:
            print(f"FAIL: {args.doc}: no `dbqs genesis --addresses` to check against")
            return 1
        cluster_dir, how = genesis_dir(args.dbqs, args.addresses, t)
        if args.self_test:
            return self_test(args, cluster_dir)
        c = Checker(args.k8s, args.compose, args.dockerfile, args.doc, cluster_dir)
        errors = c.check()
        if errors:
            for e in errors:
                print(f"FAIL: {e}")
            print(f"deploy/k8s: {len(errors)} problem(s)")
            return 1
        print(f"deploy/k8s: {len(c.objects)} objects in {os.path.relpath(args.k8s, ROOT)} consistent with "
              f"compose.yaml ({len(c.c_nodes)} nodes, image {c.c_image}, port {c.c_port}) and "
              f"{os.path.relpath(args.doc, ROOT)} (genesis --addresses {c.addresses[0]}..{c.addresses[-1]}); "
              f"make-secrets.sh checked on {how}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
