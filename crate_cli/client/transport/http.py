"""The HTTP transport: the client side of `crate server` and of the agent.

Built on `http.client` for TCP and TLS (no third-party client), one
keep-alive connection per transport. The agent's unix socket gets a minimal
HTTP/1.1 exchange of our own instead: the agent is crate's own server, which
always answers with a Content-Length, and `http.client` costs over 20 ms to
import (it pulls in `email` and `ssl`), which would eat what the agent saves
on every `crate run`. The
server's JSON errors become the same CrateError classes the loopback raises,
so a command exits the same way against a server as against a local vault.

A token is never sent in clear to another machine: plain `http://` is
accepted only for loopback addresses. TLS certificates are always verified
(a private CA can be given).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

from crate_cli.errors import (
    CrateError,
    InvalidInput,
    ServerUnreachable,
    TlsFailure,
    error_from_api,
)

TIMEOUT = 30.0
RETRIES_WHEN_BUSY = 3
MAX_MESSAGE = 1000  # characters of a server's error message or hint that are shown
# Members of an answer that crate parses and never shows: kept as they came
# (the public key's PEM has newlines; the bundle is a JWE the client checks).
PARSED_MEMBERS = frozenset({"public_key_pem", "bundle"})


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of a unix-socket peer; None where the platform does not say."""
    import struct

    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    ucred = struct.Struct("3i")  # pid, uid, gid
    _, uid, _ = ucred.unpack(sock.getsockopt(socket.SOL_SOCKET, option, ucred.size))
    return int(uid)


class _TcpConnection:
    """One keep-alive connection through http.client (TCP or TLS)."""

    def __init__(self, base_url: str, ca_file: str | None, timeout: float) -> None:
        import http.client

        parts = urlsplit(base_url)
        if parts.scheme == "https":
            import ssl

            context = ssl.create_default_context(cafile=ca_file)
            self.conn: Any = http.client.HTTPSConnection(
                parts.hostname or "", parts.port, timeout=timeout, context=context
            )
        else:
            self.conn = http.client.HTTPConnection(
                parts.hostname or "", parts.port, timeout=timeout
            )
        try:
            self.conn.connect()
        except OSError as e:
            self.conn.close()
            _raise_if_untrusted(e, base_url)
            raise
        # http.client sends headers and body in two writes: without this, Nagle
        # holds the body back until the server's delayed ACK (40 ms on Linux).
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def exchange(
        self, method: str, target: str, data: bytes | None, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        import http.client

        try:
            self.conn.request(method, target, body=data, headers=headers)
            response = self.conn.getresponse()
            raw = response.read()
        except http.client.RemoteDisconnected as e:
            raise ConnectionResetError(str(e)) from None  # a closed keep-alive connection
        except http.client.HTTPException as e:
            raise ValueError(type(e).__name__) from None
        return response.status, {k.lower(): v for k, v in response.getheaders()}, raw

    def close(self) -> None:
        self.conn.close()


def _raise_if_untrusted(error: OSError, where: str) -> None:
    import ssl

    if isinstance(error, ssl.SSLCertVerificationError):
        raise TlsFailure(
            f"the TLS certificate of {where} did not verify ({error.verify_message})",
            "if it uses a private CA, log in with --ca-file FILE",
        ) from None


class _UnixConnection:
    """One keep-alive HTTP/1.1 connection to the agent, whose uid is checked."""

    def __init__(self, path: str, timeout: float) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            uid = peer_uid(sock)
            if uid is not None and uid != os.getuid():
                raise ConnectionRefusedError(errno.EPERM, f"the socket belongs to uid {uid}")
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.reader = sock.makefile("rb")

    def exchange(
        self, method: str, target: str, data: bytes | None, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one request; the status, lower-cased headers and body of the answer."""
        body = data or b""
        lines = [f"{method} {target} HTTP/1.1", "Host: localhost"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        status_line = self.reader.readline(65537)
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ValueError("not an HTTP response")
        reply: dict[str, str] = {}
        while True:
            line = self.reader.readline(65537)
            if line in (b"\r\n", b"\n"):
                break
            if not line:
                raise ValueError("the response ended inside its headers")
            name, _, value = line.decode("latin-1").partition(":")
            reply[name.strip().lower()] = value.strip()
        length = reply.get("content-length", "")
        if not length.isdigit():
            raise ValueError("the response has no Content-Length")
        answer = self.reader.read(int(length))
        if len(answer) != int(length):
            raise ValueError("the response ended early")
        return int(parts[1]), reply, answer

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def is_loopback_host(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_server_url(url: str) -> str:
    """A server URL in one spelling (lower-case scheme and host, no default
    port, no trailing slash: pins and offline copies are kept by it); plain
    http only for loopback."""
    if "crate_" in url.lower():
        # A token pasted in its place must not be echoed, nor looked up in DNS.
        raise InvalidInput(
            "invalid server URL: it holds what looks like an API token; give the server's "
            "address (the token goes to the prompt or --token -)"
        )
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or port == -1:
        # The text is not repeated: a token pasted in its place must not be echoed.
        raise InvalidInput(
            "invalid server URL: use https://HOST[:PORT] (http:// only for loopback)"
        )
    if (
        parts.path not in ("", "/")
        or "?" in url
        or "#" in url
        or parts.username is not None
        or parts.password is not None
    ):
        raise InvalidInput("invalid server URL: give only https://HOST[:PORT], nothing more")
    scheme, host = parts.scheme.lower(), parts.hostname.lower()
    if scheme == "http" and not is_loopback_host(host):
        raise InvalidInput(
            f"refusing to send a token over plain HTTP to {host}",
            "use https:// (the server takes --tls-cert/--tls-key)",
        )
    shown = f"[{host}]" if ":" in host else host
    default = {"http": 80, "https": 443}[scheme]
    return f"{scheme}://{shown}" + (f":{port}" if port is not None and port != default else "")


class HttpTransport:
    def __init__(
        self,
        base_url: str,
        token: str | None,
        ca_file: str | None = None,
        unix_socket: str | None = None,
        timeout: float = TIMEOUT,
    ) -> None:
        self.base_url = base_url if unix_socket else check_server_url(base_url)
        self.token = token
        self.ca_file = ca_file
        self.unix_socket = unix_socket
        self.timeout = timeout
        self._conn: Any = None

    def describe(self) -> str:
        return f"the crate agent at {self.unix_socket}" if self.unix_socket else self.base_url

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None = None,
        body: Any = None,
    ) -> dict[str, Any]:
        target = path + ("?" + urlencode(query) if query else "")
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in range(RETRIES_WHEN_BUSY + 1):
            status, raw, retry_after = self._exchange(method, target, data, headers)
            if status != 503 or retry_after is None or attempt == RETRIES_WHEN_BUSY:
                break
            time.sleep(min(retry_after, 5.0))
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise CrateError(
                f"{self.describe()} answered HTTP {status} with something that is not the "
                "Crate API",
                "check the server URL",
            )
        # Text from a server reaches the user's terminal: no control characters
        # (escape sequences) in messages, names, actors or anything else.
        from crate_cli.display import safe_text, safe_value

        if status >= 400:
            error = payload.get("error")
            if not isinstance(error, dict):
                raise CrateError(f"{self.describe()} answered HTTP {status}")
            raised = error_from_api(
                str(error.get("code")), safe_text(str(error.get("message")), MAX_MESSAGE)
            )
            hint = error.get("hint")
            raised.hint = safe_text(hint, MAX_MESSAGE) if isinstance(hint, str) else None
            raise raised
        cleaned: dict[str, Any] = safe_value(payload, data=PARSED_MEMBERS)  # type: ignore[assignment]
        return cleaned

    def _open(self) -> _TcpConnection | _UnixConnection:
        if self.unix_socket:
            return _UnixConnection(self.unix_socket, self.timeout)
        return _TcpConnection(self.base_url, self.ca_file, self.timeout)

    def _exchange(
        self, method: str, target: str, data: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes, float | None]:
        # A kept-alive connection the server has closed fails on first use:
        # one retry on a fresh connection, only when nothing was answered.
        for fresh in (self._conn is None, True):
            try:
                if fresh:
                    self.close()
                    self._conn = self._open()
                status, reply_headers, raw = self._conn.exchange(method, target, data, headers)
            except (BrokenPipeError, ConnectionResetError, ValueError) as e:
                self.close()
                if not fresh:
                    continue
                raise self._unreachable(e) from None
            except OSError as e:
                self.close()
                raise self._unreachable(e) from None
            if reply_headers.get("connection", "").lower() == "close":
                self.close()
            retry = reply_headers.get("retry-after")
            return status, raw, float(retry) if retry and retry.isdigit() else None
        raise AssertionError("unreachable")

    def _unreachable(self, error: BaseException) -> ServerUnreachable:
        reason = getattr(error, "strerror", None) or type(error).__name__
        if isinstance(error, TimeoutError):
            reason = f"no answer within {self.timeout:g} s"
        return ServerUnreachable(
            f"cannot reach {self.describe()} ({reason})",
            "check that the server runs and the address is right",
        )
