"""A dBQS client written from proto/ alone: writes and reads an owned object.

Usage: interop.py CLIENT_TOML NAME
Exits 0 after writing NAME (value printed on stdout) and reading it back, checking
owner signatures and quorums exactly as PROTOCOL.md and the proto comments say.
It also reads, with --read-only, a value that another client wrote.
"""
import hashlib
import os
import sys
import tomllib

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dbqs.v1 import membership_pb2, membership_pb2_grpc, storage_pb2, storage_pb2_grpc, types_pb2

TIMEOUT_S = 5


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
        self.epoch = reply.cert.epoch
        self.f = reply.f
        self.members = [m for m in reply.members if m.ring_position]
        self.members.sort(key=lambda m: m.ring_position)
        self.stubs = {}

    def stub(self, m):
        if m.node_id not in self.stubs:
            ch = grpc.secure_channel(
                m.address,
                self.creds,
                options=[("grpc.ssl_target_name_override", m.tls_name)],
            )
            self.stubs[m.node_id] = storage_pb2_grpc.StorageStub(ch)
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
        return r

    c.quorum(oid, write)
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

    found = [v for v in c.quorum(oid, read) if v is not None]
    if not found:
        return None
    return max(found, key=lambda v: version(v.header)).value


def main():
    toml_path, name = sys.argv[1], sys.argv[2].encode()
    c = Cluster(toml_path)
    if len(sys.argv) > 3 and sys.argv[3] == "--read-only":
        v = get(c, c.owner_pub, name)
        if v is None:
            sys.exit(f"{name!r} not found")
        sys.stdout.write(v.decode())
        return
    value = b"written by the python client " + os.urandom(8).hex().encode()
    counter = put(c, name, value)
    back = get(c, c.owner_pub, name)
    if back != value:
        sys.exit(f"read back {back!r}, wrote {value!r}")
    print(value.decode())
    print(f"version {counter} in epoch {c.epoch}", file=sys.stderr)


if __name__ == "__main__":
    main()
