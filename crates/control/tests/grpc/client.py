"""A stock gRPC client that finds its backend through xDS alone.

Usage: client.py TARGET CALLS [HEADER=VALUE]. The bootstrap comes from
GRPC_XDS_BOOTSTRAP_CONFIG. Prints each answer on its own line.
"""
import sys

import grpc


def main():
    target, calls = sys.argv[1], int(sys.argv[2])
    metadata = tuple(tuple(pair.split("=", 1)) for pair in sys.argv[3:])
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/oxmesh.Echo/Call", request_serializer=None, response_deserializer=None)
        for _ in range(calls):
            print(call(b"hello", timeout=20, metadata=metadata).decode(), flush=True)


if __name__ == "__main__":
    main()
