"""An application that knows nothing of the mesh: HTTP on one port answers with
what it received (method, path, headers) as JSON; TCP on another echoes bytes;
a third speaks first, as SMTP and MySQL servers do (a banner, then echo)."""
import json
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.answer(b"")

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        self.answer(self.rfile.read(length))

    def answer(self, body):
        reply = json.dumps({
            "server": sys.argv[3],
            "client": self.client_address[0],
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode("utf-8", "replace"),
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


class TcpEcho(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(data)


class Banner(TcpEcho):
    def handle(self):
        self.request.sendall(b"220 " + sys.argv[3].encode() + b" ready\r\n")
        super().handle()


class Threaded(socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    http_port, tcp_port = int(sys.argv[1]), int(sys.argv[2])
    tcp = Threaded(("0.0.0.0", tcp_port), TcpEcho)
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    banner = Threaded(("0.0.0.0", int(sys.argv[4])), Banner)
    threading.Thread(target=banner.serve_forever, daemon=True).start()
    ThreadingHTTPServer(("0.0.0.0", http_port), Echo).serve_forever()
