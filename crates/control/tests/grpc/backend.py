"""A gRPC server that answers /oxmesh.Echo/Call with its own name.

Usage: backend.py NAME. Listens on an ephemeral loopback port, prints the port,
then serves until stdin closes (so it dies with the test that started it).
"""
import sys
from concurrent import futures

import grpc


def main():
    name = sys.argv[1]
    answer = grpc.unary_unary_rpc_method_handler(lambda request, context: name.encode())
    handler = grpc.method_handlers_generic_handler("oxmesh.Echo", {"Call": answer})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    main()
