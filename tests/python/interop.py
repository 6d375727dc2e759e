"""A dBQS client written from proto/ alone: writes and reads an owned object.

Usage: interop.py CLIENT_TOML NAME
Exits 0 after writing NAME (value printed on stdout) and reading it back, checking
owner signatures and quorums as PROTOCOL.md and the proto comments say.
It also reads, with --read-only, a value that another client wrote.

It is an interoperability check, not a complete client: a put cut short by an epoch
change is run again from phase 1 (signing a new version, which PROTOCOL.md's "Retries
keep the version" forbids a real client once any replica may hold the first one), and
a read does not write back. One writer of its own test name makes both harmless here.
"""
import hashlib
import os
import sys
import time
import tomllib

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dbqs.v1 import membership_pb2, membership_pb2_grpc, storage_pb2, storage_pb2_grpc, types_pb2

TIMEOUT_S = 5
# Assumed clock drift bound (PROTOCOL.md, "Clocks").
RHO = 0.01


def sha256(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.digest()


class Cluster:
    def __init__(self, toml_path):
        base = os.path.dirname(os.path.abspath(toml_path))
        with open(toml_path, "rb") as f:
            cfg = tomllib.load(f)
        rd = lambda p: open(os.path.join(base, p), "rb").read()
        self.creds = grpc.ssl_channel_credentials(
            root_certificates=rd(cfg["ca_cert"]),
            private_key=rd(cfg["tls_key"]),
            certificate_chain=rd(cfg["tls_cert"]),
        )
        tls_cert = rd(cfg["tls_cert"])
        seed = bytes.fromhex(rd(cfg["owner_key"]).decode().strip())
        self.owner = Ed25519PrivateKey.from_private_bytes(seed)
        self.owner_pub = self.owner.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.writer = sha256(b"python-writer", tls_cert)
        # Bootstrap: any member's GetConfig (its certificate names its host).
        boot = grpc.secure_channel(cfg["bootstrap"][0], self.creds)
        reply = membership_pb2_grpc.MembershipStub(boot).GetConfig(
            membership_pb2.GetConfigRequest(epoch=0), timeout=TIMEOUT_S
        )
        self.stubs = {}
        self.ms_stubs = {}
        self.lease = None
        self.adopt(reply)

    def adopt(self, reply):
        self.epoch = reply.cert.epoch
        self.f = reply.f
        self.lease_s = reply.lease_ms / 1000
        self.ms = [m for m in reply.members if m.ms_member]
        self.members = [m for m in reply.members if m.ring_position]
        self.members.sort(key=lambda m: m.ring_position)

    def channel(self, m):
        return grpc.secure_channel(
            m.address,
            self.creds,
            options=[("grpc.ssl_target_name_override", m.tls_name)],
        )

    def membership(self, m):
        if m.node_id not in self.ms_stubs:
            self.ms_stubs[m.node_id] = membership_pb2_grpc.MembershipStub(self.channel(m))
        return self.ms_stubs[m.node_id]

    def refresh(self):
        """Adopts the newest configuration an MS member holds."""
        for m in self.ms:
            try:
                r = self.membership(m).GetConfig(membership_pb2.GetConfigRequest(epoch=0), timeout=TIMEOUT_S)
            except grpc.RpcError:
                continue
            if r.cert.epoch > self.epoch:
                self.adopt(r)
            return

    def obtain_lease(self):
        """The lease recipe of membership.proto: f_ms+1 MS members vouch for one epoch."""
        nonce = os.urandom(32)
        sent = time.monotonic()
        need = (len(self.ms) - 1) // 3 + 1
        votes = {}
        for m in self.ms:
            try:
                r = self.membership(m).Freshness(membership_pb2.FreshnessRequest(nonce=nonce), timeout=TIMEOUT_S)
            except grpc.RpcError:
                continue
            if r.node_id != m.node_id or not merkle_ok(nonce, r):
                continue
            votes.setdefault(r.epoch, set()).add(m.node_id)
            if len(votes[r.epoch]) >= need:
                self.lease = (r.epoch, sent + self.lease_s / (1 + RHO))
                return r.epoch
        raise RuntimeError(f"no freshness lease: {votes}")

    def with_lease(self):
        """A lease for the current epoch with at least half of it left."""
        if self.lease and self.lease[0] == self.epoch and self.lease[1] - time.monotonic() > self.lease_s / 2:
            return
        epoch = self.obtain_lease()
        if epoch > self.epoch:
            self.refresh()
        if self.lease[0] != self.epoch:
            raise RuntimeError(f"lease for epoch {self.lease[0]}, configuration {self.epoch}")

    def check_lease(self):
        """An operation completes only if the lease still runs at its last reply."""
        if not self.lease or self.lease[0] != self.epoch or time.monotonic() >= self.lease[1]:
            raise RuntimeError("freshness lease lapsed during the operation")

    def stub(self, m):
        if m.node_id not in self.stubs:
            self.stubs[m.node_id] = storage_pb2_grpc.StorageStub(self.channel(m))
        return self.stubs[m.node_id]

    def group(self, object_id):
        """The first 3f+1 members clockwise from the id on the ring."""
        n = min(3 * self.f + 1, len(self.members))
        start = next(
            (i for i, m in enumerate(self.members) if m.ring_position >= object_id), 0
        )
        return [self.members[(start + k) % len(self.members)] for k in range(n)]

    def quorum(self, object_id, call):
        """q = 2f+1 valid replies from distinct members of the group."""
        ok, errors = [], []
        for m in self.group(object_id):
            try:
                r = call(self.stub(m))
                ok.append(r)
            except (grpc.RpcError, ValueError) as e:
                errors.append(f"{m.node_id.hex()[:8]}: {e}")
        if len(ok) < 2 * self.f + 1:
            raise RuntimeError(f"quorum not reached: {len(ok)} replies; {errors}")
        return ok


def tag(kind):
    return b"dbqs.v1." + kind + b"\x00"


def merkle_ok(nonce, r):
    """Checks that the nonce is leaf `index` of the tree whose root the reply names."""
    if r.index >= r.leaf_count:
        return False
    h = sha256(tag(b"freshness-leaf"), nonce)
    i, n, path = r.index, r.leaf_count, list(r.path)
    while n > 1:
        if i ^ 1 < n:
            if not path:
                return False
            s = path.pop(0)
            h = sha256(tag(b"freshness-node"), h, s) if i % 2 == 0 else sha256(tag(b"freshness-node"), s, h)
        i //= 2
        n = (n + 1) // 2
    return not path and sha256(tag(b"freshness-root"), r.leaf_count.to_bytes(4, "big"), h) == r.root


def verify_header(h, object_id):
    if h.object_id != object_id or sha256(b"owned", h.owner_key, h.name) != object_id:
        raise ValueError("header for another object")
    msg = (
        b"dbqs.v1.owned-write\x00"
        + h.object_id
        + h.timestamp.counter.to_bytes(8, "big")
        + h.timestamp.writer
        + h.value_hash
    )
    Ed25519PublicKey.from_public_bytes(h.owner_key).verify(h.signature, msg)


def version(h):
    return (h.timestamp.counter, h.timestamp.writer, h.value_hash)


def put(c, name, value):
    oid = sha256(b"owned", c.owner_pub, name)

    def read_ts(stub):
        r = stub.ReadTimestamp(storage_pb2.ReadTimestampRequest(epoch=c.epoch, object_id=oid), timeout=TIMEOUT_S)
        if r.epoch != c.epoch:
            raise ValueError("other epoch")
        if r.HasField("header"):
            verify_header(r.header, oid)
            return r.header.timestamp.counter
        return 0

    c.with_lease()
    counter = max(c.quorum(oid, read_ts)) + 1
    vh = sha256(value)
    msg = b"dbqs.v1.owned-write\x00" + oid + counter.to_bytes(8, "big") + c.writer + vh
    header = types_pb2.OwnedHeader(
        object_id=oid,
        owner_key=c.owner_pub,
        name=name,
        timestamp=types_pb2.Timestamp(counter=counter, writer=c.writer),
        value_hash=vh,
        signature=c.owner.sign(msg),
    )
    req = storage_pb2.WriteRequest(epoch=c.epoch, owned=types_pb2.OwnedValue(header=header, value=value))

    def write(stub):
        r = stub.Write(req, timeout=TIMEOUT_S)
        if r.epoch != c.epoch or r.object_id != oid:
            raise ValueError("bad ack")
        # Only these two acknowledge; OLDER (a newer version is stored) never does.
        if r.outcome not in (storage_pb2.WRITE_OUTCOME_STORED, storage_pb2.WRITE_OUTCOME_ALREADY_HELD):
            raise ValueError("not acknowledged: outcome %d" % r.outcome)
        return r

    c.quorum(oid, write)
    c.check_lease()
    return counter


def get(c, owner_pub, name):
    oid = sha256(b"owned", owner_pub, name)

    def read(stub):
        r = stub.Read(
            storage_pb2.ReadRequest(epoch=c.epoch, object_id=oid, kind=storage_pb2.OBJECT_KIND_OWNED),
            timeout=TIMEOUT_S,
        )
        if r.epoch != c.epoch:
            raise ValueError("other epoch")
        if not r.HasField("owned"):
            return None
        verify_header(r.owned.header, oid)
        if sha256(r.owned.value) != r.owned.header.value_hash:
            raise ValueError("value does not match its hash")
        return r.owned

    c.with_lease()
    found = [v for v in c.quorum(oid, read) if v is not None]
    c.check_lease()
    if not found:
        return None
    return max(found, key=lambda v: version(v.header)).value


def retrying(c, op):
    """Epochs end every few seconds on a devnet: a phase that met a newer epoch is redone
    in it (a bounded number of times)."""
    for attempt in range(5):
        try:
            return op()
        except RuntimeError as e:
            if attempt == 4:
                raise
            print(f"retrying after: {e}", file=sys.stderr)
            c.refresh()


def main():
    toml_path, name = sys.argv[1], sys.argv[2].encode()
    c = Cluster(toml_path)
    if len(sys.argv) > 3 and sys.argv[3] == "--read-only":
        v = retrying(c, lambda: get(c, c.owner_pub, name))
        if v is None:
            sys.exit(f"{name!r} not found")
        sys.stdout.write(v.decode())
        return
    value = b"written by the python client " + os.urandom(8).hex().encode()
    counter = retrying(c, lambda: put(c, name, value))
    back = retrying(c, lambda: get(c, c.owner_pub, name))
    if back != value:
        sys.exit(f"read back {back!r}, wrote {value!r}")
    print(value.decode())
    print(f"version {counter} in epoch {c.epoch}", file=sys.stderr)


if __name__ == "__main__":
    main()
