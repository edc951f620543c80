"""A TCP proxy in front of the test server that can freeze: a server hung mid-statement."""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

from pgserver import ServerInfo


class FreezingProxy:
    """Forwards connections to ``server`` until `freeze`; from then on nothing is forwarded
    either way and new connections (a cancel request, say) are accepted and never answered,
    while every socket stays open: what a client sees of a server that hangs."""

    def __init__(self, server: ServerInfo) -> None:
        self._server = server
        self._frozen = threading.Event()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def conninfo(self, dbname: str) -> str:
        password = f" password={self._server.password}" if self._server.password else ""
        return f"host=127.0.0.1 port={self.port} user={self._server.user} dbname={dbname}{password}"

    def freeze(self) -> None:
        self._frozen.set()

    def close(self) -> None:
        self._closed.set()
        self._frozen.set()
        self._listener.close()
        for sock in self._sockets:
            sock.close()

    def __enter__(self) -> FreezingProxy:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _upstream(self) -> socket.socket:
        host, port = self._server.host, self._server.port
        if host.startswith("/"):  # a Unix socket directory
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(f"{host}/.s.PGSQL.{port}")
            return upstream
        return socket.create_connection((host, port))

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            self._sockets.append(client)
            if self._frozen.is_set():
                continue  # accepted, never answered
            upstream = self._upstream()
            self._sockets.append(upstream)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if self._frozen.is_set():
                    self._closed.wait()  # hold what was read; forward nothing more
                    return
                sink.sendall(data)
