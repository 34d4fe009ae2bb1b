#!/usr/bin/env python3
"""Container health probe through grpc.health.v1 (Docker HEALTHCHECK, or anything without a native gRPC probe).

Exit status: 0 when the server answers SERVING for the service, 1 otherwise (NOT_SERVING, unknown
service, no answer before the deadline). One line on stderr says why. Only grpcio and
grpcio-health-checking are needed, both in ninefold's base dependencies.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=None,
                        help="host:port (default 127.0.0.1:$NINEFOLD_PORT, port 8001 when unset)")
    parser.add_argument("--service", default="",
                        help='health service: "" = whole server, or e.g. "ninefold.v1.Vision/classify"')
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    address = args.address or f"127.0.0.1:{os.environ.get('NINEFOLD_PORT', '8001')}"
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
        except grpc.RpcError as error:
            print(f"unhealthy: {address} service {args.service!r}: {error.code().name}: {error.details()}",
                  file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"unhealthy: {address} service {args.service!r} is {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
