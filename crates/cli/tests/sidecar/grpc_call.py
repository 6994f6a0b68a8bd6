"""A stock gRPC client (plaintext; the sidecar adds mTLS): one unary call and
one bidirectional stream to TARGET, results printed as JSON."""
import json
import sys

import grpc

target = sys.argv[1]
with grpc.insecure_channel(target) as channel:
    call = channel.unary_unary("/oxmesh.Echo/Call")
    unary = call(b"hello", timeout=10).decode()
    chat = channel.stream_stream("/oxmesh.Echo/Chat")
    replies = [m.decode() for m in chat(iter([b"one", b"two", b"three"]), timeout=10)]
    try:
        channel.unary_unary("/oxmesh.Echo/Missing")(b"x", timeout=10)
        missing = "OK"
    except grpc.RpcError as e:
        missing = e.code().name
print(json.dumps({"unary": unary, "stream": replies, "missing": missing}))
