"""The HTTP client against a small real HTTP server on loopback: what goes over the wire (the token header, a
streamed multipart body with its length), pages followed, redirects not followed (the token must not travel to
another address), and answers that are not the API's turned into messages."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from apps.cli.client import Client
from apps.cli.errors import ApiError, CliError
from apps.cli.progress import ProgressLine, elapsed


class Recorder(BaseHTTPRequestHandler):
    """Answers from `routes` ({(method, path): (status, headers, body)}) and records every request."""

    routes: dict[tuple[str, str], tuple[int, dict[str, str], bytes]] = {}
    seen: list[dict[str, Any]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body})
        missing = (404, {}, b'{"error": {"code": "not_found", "message": "Not found."}}')
        status, headers, payload = self.routes.get((self.command, self.path), missing)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[Recorder]]]:
    handler = type("Handler", (Recorder,), {"routes": {}, "seen": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


def json_answer(data: Any, status: int = 200) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(data).encode()


def test_requests_carry_the_token_and_json(server):
    url, handler = server
    handler.routes[("POST", "/api/v1/deployments/4/resize/")] = json_answer({"id": 4, "state": "active"}, 202)
    answer = Client(url, "sky_abc").request("POST", "deployments/4/resize/", body={"size": "medium"},
                                            headers={"Idempotency-Key": "k1"})
    assert answer == {"id": 4, "state": "active"}
    request = handler.seen[0]
    assert request["headers"]["Authorization"] == "Token sky_abc"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["Idempotency-Key"] == "k1"
    assert json.loads(request["body"]) == {"size": "medium"}


def test_lists_follow_next_links_on_our_own_address(server):
    url, handler = server
    # the server names itself differently (behind a proxy): the client keeps its own address, takes the path
    handler.routes[("GET", "/api/v1/images/?page_size=200&state=ready")] = json_answer(
        {"count": 3, "next": "https://elsewhere.example/api/v1/images/?page=2&page_size=200&state=ready",
         "results": [{"id": 1}, {"id": 2}]})
    handler.routes[("GET", "/api/v1/images/?page=2&page_size=200&state=ready")] = json_answer(
        {"count": 3, "next": None, "results": [{"id": 3}]})
    assert Client(url, "t").list("images/", {"state": "ready", "search": None}) == [{"id": 1}, {"id": 2}, {"id": 3}]
    assert len(handler.seen) == 2


def test_repeatable_filters_repeat_in_the_query(server):
    url, _ = server
    client = Client(url, "t")
    assert client.api_url("deployments/", {"state": ["active", "deleting"], "owner": "connor"}) == (
        f"{url}/api/v1/deployments/?state=active&state=deleting&owner=connor")


def test_a_redirect_is_reported_and_not_followed_with_the_token(server):
    url, handler = server
    handler.routes[("GET", "/api/v1/me/")] = (301, {"Location": f"{url}/elsewhere/"}, b"")
    with pytest.raises(ApiError) as caught:
        Client(url, "sky_secret").request("GET", "me/")
    assert caught.value.status == 301
    assert f"redirects to {url}/elsewhere/" in caught.value.message
    assert [r["path"] for r in handler.seen] == ["/api/v1/me/"]  # never went to /elsewhere/ with the token


def test_an_html_error_page_becomes_a_message_with_the_status(server):
    url, handler = server
    handler.routes[("GET", "/api/v1/me/")] = (502, {"Content-Type": "text/html"}, b"<html>Bad gateway</html>")
    with pytest.raises(ApiError, match=r"HTTP 502 Bad Gateway from http://127\.0\.0\.1"):
        Client(url, "t").request("GET", "me/")


def test_a_success_that_is_not_json_is_not_a_skyport_server(server):
    url, handler = server
    handler.routes[("GET", "/api/v1/me/")] = (200, {"Content-Type": "text/html"}, b"<html>hello</html>")
    with pytest.raises(CliError, match="is it the address of a Skyport server"):
        Client(url, "t").request("GET", "me/")


def test_upload_streams_a_multipart_body_of_the_announced_length(server, tmp_path):
    url, handler = server
    handler.routes[("POST", "/api/v1/images/upload/")] = json_answer({"id": 9, "state": "ready"}, 201)
    image = tmp_path / "disk.qcow2"
    data = bytes(range(256)) * 12_000  # ~3 MiB: several chunks
    image.write_bytes(data)
    reports: list[tuple[int, int]] = []
    answer = Client(url, "t").upload("images/upload/", {"project": 1, "name": "Tiny", "os": ""}, image,
                                     lambda sent, total: reports.append((sent, total)))
    assert answer == {"id": 9, "state": "ready"}
    request = handler.seen[0]
    body = request["body"]
    assert int(request["headers"]["Content-Length"]) == len(body)
    boundary = request["headers"]["Content-Type"].split("boundary=")[1]
    assert body.startswith(f'--{boundary}\r\nContent-Disposition: form-data; name="project"\r\n\r\n1\r\n'.encode())
    assert b'name="os"' not in body  # empty fields are left out
    start = body.index(b"\r\n\r\n", body.index(b'filename="disk.qcow2"')) + 4
    end = body.rindex(f"\r\n--{boundary}--\r\n".encode())
    assert hashlib.sha256(body[start:end]).hexdigest() == hashlib.sha256(data).hexdigest()
    assert len(reports) == 3 and reports[-1] == (len(data), len(data))
    assert [s for s, _ in reports] == sorted(s for s, _ in reports)


def test_the_trace_records_calls_without_token_or_query(server, tmp_path):
    url, handler = server
    handler.routes[("GET", "/api/v1/deployments/?page_size=200&search=shop")] = json_answer({"results": []})
    trace = tmp_path / "trace.jsonl"
    Client(url, "sky_secret", command="deployments list", trace=str(trace)).list("deployments/", {"search": "shop"})
    with pytest.raises(ApiError):
        Client(url, "sky_secret", command="deployments show", trace=str(trace)).request("GET", "deployments/5/")
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    assert lines == [
        {"command": "deployments list", "method": "GET", "path": "/api/v1/deployments/", "status": 200},
        {"command": "deployments show", "method": "GET", "path": "/api/v1/deployments/5/", "status": 404},
    ]
    assert "sky_secret" not in trace.read_text()


def test_the_client_never_shows_its_token():
    assert "sky_secret" not in repr(Client("http://x", "sky_secret"))


# --- the progress line --------------------------------------------------------------------------------------------
class Stream:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def test_off_a_terminal_progress_is_one_line_per_change():
    stream = Stream()
    line = ProgressLine(stream)  # type: ignore[arg-type]
    for text in ("shop  provisioning  0/3 running", "shop  provisioning  0/3 running", "shop  active  3/3 running"):
        line.update(text)
    line.done()
    assert [row.rsplit("  ", 1)[0] for row in stream.text.splitlines()] == [
        "shop  provisioning  0/3 running", "shop  active  3/3 running"]
    assert "\r" not in stream.text


def test_on_a_terminal_progress_rewrites_one_line():
    stream = Stream()
    line = ProgressLine(stream, tty=True)  # type: ignore[arg-type]
    line.update("shop  provisioning  0/3 running, 3 building")
    line.update("shop  active  3/3 running")
    line.note("reconnected")
    line.done()
    assert stream.text.count("\n") == 2  # the note's line and the end
    assert re.match(r"\rshop  provisioning  0/3 running, 3 building  \d\d:\d\d", stream.text)
    assert re.search(r"\rshop  active  3/3 running  \d\d:\d\d +\r +\rreconnected\n", stream.text)


def test_quiet_progress_prints_nothing():
    stream = Stream()
    line = ProgressLine(stream, tty=True, quiet=True)  # type: ignore[arg-type]
    line.update("x")
    line.note("y")
    line.done()
    assert stream.text == ""


def test_elapsed_time_format():
    assert (elapsed(14.9), elapsed(754), elapsed(3600 + 62)) == ("00:14", "12:34", "1:01:02")
