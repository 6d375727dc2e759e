"""Lists a node's gRPC services by server reflection (what grpcurl does).

Usage: reflection.py CLIENT_TOML   -- exits 1 unless Storage, Membership and
Health are all listed.
"""
import os
import sys
import tomllib

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def main():
    path = sys.argv[1]
    base = os.path.dirname(os.path.abspath(path))
    with open(path, "rb") as f:
        cfg = tomllib.load(f)
    rd = lambda p: open(os.path.join(base, p), "rb").read()
    creds = grpc.ssl_channel_credentials(
        root_certificates=rd(cfg["ca_cert"]),
        private_key=rd(cfg["tls_key"]),
        certificate_chain=rd(cfg["tls_cert"]),
    )
    channel = grpc.secure_channel(cfg["bootstrap"][0], creds)
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = sorted(s.name for r in replies for s in r.list_services_response.service)
    print("\n".join(names))
    want = {"dbqs.v1.Storage", "dbqs.v1.Membership", "grpc.health.v1.Health"}
    missing = want - set(names)
    if missing:
        sys.exit(f"missing services: {sorted(missing)}")
    if "dbqs.v1.Pbft" in names:
        sys.exit("advertises dbqs.v1.Pbft, which a storage node does not serve")


if __name__ == "__main__":
    main()
