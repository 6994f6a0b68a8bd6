"""A gRPC server that knows nothing of the mesh (stock grpcio, no xDS):
/oxmesh.Echo/Call answers "<name>: <request>" and what XFCC it saw;
/oxmesh.Echo/Chat echoes every message of a bidirectional stream."""
import sys
from concurrent import futures

import grpc


def call(request, context):
    metadata = dict(context.invocation_metadata())
    xfcc = metadata.get("x-forwarded-client-cert", "")
    return f"{sys.argv[2]}: {request.decode()} | xfcc={xfcc}".encode()


def chat(requests, context):
    for message in requests:
        yield b"echo " + message


if __name__ == "__main__":
    handler = grpc.method_handlers_generic_handler("oxmesh.Echo", {
        "Call": grpc.unary_unary_rpc_method_handler(call),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"0.0.0.0:{sys.argv[1]}")
    server.start()
    server.wait_for_termination()
