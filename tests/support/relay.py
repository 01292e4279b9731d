"""An active relay between crate's client and a real `crate server`, for tests.

It listens on 127.0.0.1 and forwards every request to the server, as a
TLS-intercepting proxy or a stolen certificate would let an attacker do. Its
`mode` decides what it does to the traffic:

- `honest`: forwards as it is (and keeps a copy of every body it saw);
- `swap-key`: answers the org public key with its own key and key id, and
  rewrites each retrieval: the client's ephemeral key is replaced by its
  own, the answer opened, read (`stolen`) and sealed again to the client's
  key, with the server's signature passed along;
- `tamper`: like `swap-key`, but it also changes a value it re-seals;
- `versions`: asks the server for version 1 of every secret the client
  retrieves (rolling a rotated secret back), passing the answer on as it is;
- `drop-tags`: removes the client's tag filter from retrievals;
- `retag`: replaces the tags of what the client stores with `web`.

relay = Relay(server_url); relay.start(); relay.url ... relay.stop()
"""

from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from crate_cli.vault import jwe


class Relay:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.mode = "honest"
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        self.kid = jwe.thumbprint(self.key.public_key())
        self.seen: list[bytes] = []  # every request body that crossed
        self.stolen: list[dict[str, Any]] = []  # bundles opened in the middle
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    def start(self) -> str:
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                relay.seen.append(body)
                status, headers, answer = relay.handle(self.command, self.path, self.headers, body)
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_PUT = do_POST = do_DELETE = _forward

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _upstream(
        self, method: str, path: str, headers: Any, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            sent = {
                k: v
                for k, v in headers.items()
                if k.lower() in ("authorization", "content-type", "accept")
            }
            conn.request(method, path, body=body or None, headers=sent)
            reply = conn.getresponse()
            return reply.status, reply.getheaders(), reply.read()
        finally:
            conn.close()

    def handle(
        self, method: str, path: str, headers: Any, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        if self.mode == "honest":
            return self._upstream(method, path, headers, body)
        if self.mode in ("versions", "drop-tags") and path.endswith("/secrets/retrieve"):
            request = json.loads(body)
            if self.mode == "drop-tags":
                request["tags"] = []
            else:
                if not request.get("names"):  # name them all, from an unsigned list
                    listing = path.removesuffix("/retrieve") + "?env=" + request["environment"]
                    _, _, raw = self._upstream("GET", listing, headers, b"")
                    request["names"] = [s["name"] for s in json.loads(raw)["secrets"]]
                request["versions"] = dict.fromkeys(request["names"], 1)
            return self._upstream(method, path, headers, json.dumps(request).encode())
        if self.mode == "retag" and method == "PUT" and path.endswith("/secrets"):
            request = json.loads(body)
            for entry in request.get("secrets", [request]):
                entry["tags"] = ["web"]
            return self._upstream(method, path, headers, json.dumps(request).encode())
        if self.mode in ("versions", "drop-tags", "retag"):
            return self._upstream(method, path, headers, body)
        if path.endswith("/secrets/public-key"):
            pem = self.key.public_key().public_bytes(
                Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
            )
            answer = {"public_key_pem": pem.decode(), "key_id": self.kid, "alg": jwe.ALG}
            return 200, [("Content-Type", "application/json")], json.dumps(answer).encode()
        if path.endswith("/secrets/retrieve") and method == "POST":
            request = json.loads(body)
            client_jwk = request["public_key"]
            request["public_key"] = jwe.public_jwk(self.key.public_key())
            status, reply_headers, raw = self._upstream(
                method, path, headers, json.dumps(request).encode()
            )
            if status != 200:
                return status, reply_headers, raw
            reply = json.loads(raw)
            opened = json.loads(jwe.decrypt(self.key, reply["bundle"]).plaintext)
            self.stolen.append(opened)
            if self.mode == "tamper" and opened.get("values"):
                opened["values"][0] = "changed-by-the-relay"
            reply["bundle"] = jwe.encrypt(
                jwe.public_key_from_jwk(client_jwk), json.dumps(opened).encode()
            )
            return status, reply_headers, json.dumps(reply).encode()
        return self._upstream(method, path, headers, body)
