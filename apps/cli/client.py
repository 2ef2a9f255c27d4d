"""HTTP to the Skyport API with the standard library: the token header, JSON in and out, the error envelope turned
into `ApiError`, a server that does not answer into `Unreachable`, pages followed, and a multipart upload that
streams a file from disk with a progress callback (an image can be many GiB: it is never read whole).

Redirects are not followed: urllib would resend the token to wherever a redirect points and turn a POST into a GET.
A redirect is reported with the address to log in to instead.

With `SKYPORT_TRACE=<file>` every call is appended to that file as one JSON line (command, method, path without the
query, status): for troubleshooting, and how the tests check that each command makes the calls it declares. Neither
the token nor any body is ever written there."""

from __future__ import annotations

import json
import os
import secrets
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from apps.cli import version
from apps.cli.errors import ApiError, CliError, Unreachable

API_PREFIX = "/api/v1/"
CHUNK = 1024 * 1024
PAGE_SIZE = 200


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({reason.verify_message})"
    if isinstance(reason, socket.gaierror):
        return "unknown host name"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError | socket.timeout):
        return "no answer (timed out)"
    return str(getattr(reason, "strerror", None) or reason)


class Client:
    """One server and token. `command` names the CLI command in the trace."""

    def __init__(self, url: str, token: str, *, command: str = "", timeout: float = 60.0,
                 trace: str | None = None) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self.command = command
        self.timeout = timeout
        self.trace = trace if trace is not None else os.environ.get("SKYPORT_TRACE") or None
        self._opener = urllib.request.build_opener(_NoRedirect)

    def __repr__(self) -> str:  # never the token
        return f"Client({self.url!r})"

    # --- addresses --------------------------------------------------------------------------------------------
    def api_url(self, path: str, query: dict[str, Any] | None = None) -> str:
        """`deployments/3/` or `/api/v1/deployments/3/` (a `next` link's path) → the full URL with the query."""
        if not path.startswith("/"):
            path = API_PREFIX + path
        url = self.url + path
        pairs = [(k, v) for k, v in (query or {}).items() if v is not None and v != ""]
        flat: list[tuple[str, Any]] = []
        for key, value in pairs:
            if isinstance(value, list | tuple):
                flat.extend((key, item) for item in value)  # a repeatable filter: ?state=a&state=b
            else:
                flat.append((key, value))
        if flat:
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode(flat)
        return url

    def ws_url(self, path: str = "/ws/deployments/") -> str:
        parts = urllib.parse.urlsplit(self.url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + path, "", ""))

    def auth_header(self) -> dict[str, str]:
        return {"Authorization": f"Token {self._token}"}

    # --- requests ---------------------------------------------------------------------------------------------
    def request(self, method: str, path: str, *, body: Any = None, query: dict[str, Any] | None = None,
                headers: dict[str, str] | None = None) -> Any:
        """Send one JSON request; the decoded answer (None when empty). Raises ApiError or Unreachable."""
        data = None if body is None else json.dumps(body).encode()
        extra = {"Content-Type": "application/json"} if data is not None else {}
        return self._send(method, self.api_url(path, query), data, {**extra, **(headers or {})}, self.timeout)

    def list(self, path: str, query: dict[str, Any] | None = None) -> list[Any]:
        """Every result of a paged list, following `next` (number and cursor pages alike)."""
        answer = self.request("GET", path, query={"page_size": PAGE_SIZE, **(query or {})})
        if isinstance(answer, list):
            return answer
        results = list(answer.get("results") or [])
        while answer.get("next"):
            # the link's host may be the server's idea of itself (behind a proxy): keep ours, take its path
            parts = urllib.parse.urlsplit(answer["next"])
            link = self.url + parts.path + (f"?{parts.query}" if parts.query else "")
            answer = self._send("GET", link, None, {}, self.timeout)
            results.extend(answer.get("results") or [])
        return results

    def upload(self, path: str, fields: dict[str, Any], file_path: Path,
               progress: Callable[[int, int], None] | None = None) -> Any:
        """POST multipart/form-data with the file streamed from disk; `progress(sent, total)` after each chunk."""
        boundary = "skyport-" + secrets.token_hex(16)
        head = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
            for name, value in fields.items() if value is not None and value != ""
        )
        filename = file_path.name.replace('"', "_").replace("\r", "_").replace("\n", "_")
        head += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        try:
            size = file_path.stat().st_size
        except OSError as exc:
            raise Unreachable(f"cannot read {file_path}: {exc.strerror}") from None

        def chunks() -> Iterator[bytes]:
            yield head
            sent = 0
            with file_path.open("rb") as stream:
                while chunk := stream.read(CHUNK):
                    sent += len(chunk)
                    yield chunk
                    if progress is not None:
                        progress(sent, size)
            yield tail

        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}",
                   "Content-Length": str(len(head) + size + len(tail))}
        # no read timeout: the server checks the whole image before it answers
        return self._send("POST", self.api_url(path), chunks(), headers, None)

    def _send(self, method: str, url: str, data: Any, headers: dict[str, str], timeout: float | None) -> Any:
        # the scheme is http or https: normalize_url checked it, and links are re-rooted on self.url
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310
        request.add_header("Accept", "application/json")
        request.add_header("User-Agent", f"skyport-cli/{version()}")
        for name, value in {**self.auth_header(), **headers}.items():
            request.add_header(name, value)
        status = 0
        try:
            with self._opener.open(request, timeout=timeout) as response:
                status = response.status
                raw = response.read()
        except urllib.error.HTTPError as exc:
            status = exc.code
            raw = exc.read()
            self._trace(method, url, status)
            raise self._error(exc.code, exc.reason, raw, exc.headers) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self._trace(method, url, 0)
            raise Unreachable(f"cannot reach Skyport at {self.url}: {_reason(exc)}") from None
        self._trace(method, url, status)
        try:
            return json.loads(raw) if raw.strip() else None
        except ValueError:
            raise CliError(f"{self.url} did not answer JSON: is it the address of a Skyport server?") from None

    def _error(self, status: int, reason: str, raw: bytes, headers: Any) -> ApiError:
        try:
            body = json.loads(raw) if raw.strip() else None
        except ValueError:
            body = None
        if 300 <= status < 400:
            where = headers.get("Location", "") if headers is not None else ""
            return ApiError(status, "redirect", f"{self.url} redirects to {where or 'another address'}",
                            hints=["  log in with that address: skyport login --url <address>"])
        return ApiError.from_body(status, body, f"HTTP {status} {reason} from {self.url}")

    def _trace(self, method: str, url: str, status: int) -> None:
        if not self.trace:
            return
        self.record(method, urllib.parse.urlsplit(url).path, status)

    def record(self, method: str, path: str, status: int) -> None:
        """Append one call to the trace file (also used for the websocket, which urllib does not carry)."""
        if not self.trace:
            return
        line = json.dumps({"command": self.command, "method": method, "path": path, "status": status})
        with open(self.trace, "a") as stream:
            stream.write(line + "\n")
