"""A TCP relay in front of the live server, to put the client through network trouble with the real server behind:
`drop()` cuts every open connection (a websocket included), and `refuse_websockets` closes any connection whose
request asks for a websocket upgrade (a proxy that does not pass websockets)."""

from __future__ import annotations

import contextlib
import socket
import threading


class Relay:
    def __init__(self, upstream_port: int, *, refuse_websockets: bool = False) -> None:
        self.upstream_port = upstream_port
        self.refuse_websockets = refuse_websockets
        self.refused = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = client.recv(65536)
            if not chunk:
                client.close()
                return
            head += chunk
        if self.refuse_websockets and b"upgrade: websocket" in head.lower():
            self.refused += 1
            client.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        with self._lock:
            self._open.update((client, upstream))
        upstream.sendall(head)
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._pump(client, upstream)

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()
            with self._lock:
                self._open.difference_update((source, target))

    def open_connections(self) -> int:
        with self._lock:
            return len(self._open) // 2

    def drop(self) -> None:
        """Cut every connection open now, as a network failure would."""
        with self._lock:
            sockets = list(self._open)
        for end in sockets:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.drop()
