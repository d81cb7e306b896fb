"""A TCP relay in front of the real PostgreSQL that plays a server restart for the clients connected through it.

`restart(down_s)` drops every relayed connection and refuses new ones for `down_s` seconds, then accepts again
on the same port: what a restarting server (or a failover) looks like from the client's side, without stopping
the server the rest of the suite uses. `lose_commit_reply(marker)`: the next transaction that sets a trial's
state and carries `marker` (e.g. b"COMPLETE") is committed by the server, but its connection dies before the
answer reaches the client: a network that fails at the worst moment."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class Relay:
    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.commit_to_lose: bytes | None = None
        self._serve()

    def lose_commit_reply(self, marker: bytes) -> None:
        self.commit_to_lose = marker

    def restart(self, down_s: float) -> None:
        self._drop()
        time.sleep(down_s)
        self.listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: the same port again
        self._serve()

    def close(self) -> None:
        self._drop()

    def _serve(self) -> None:
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _drop(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self.listener.close()
        with self.lock:
            dropped, self.open = self.open, set()
        for s in dropped:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # the listener was dropped: the "server" is down
                return
            server = socket.create_connection(self.target)
            with self.lock:
                self.open |= {client, server}
            session = {"armed": False, "muted": False}
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst, session, src is client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, session: dict, from_client: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                marker = self.commit_to_lose
                if from_client and marker and b"UPDATE trials SET state" in data and marker in data:
                    session["armed"] = True
                if from_client and session["armed"] and b"COMMIT" in data:
                    self.commit_to_lose, session["muted"] = None, True  # the server's answer is dropped
                    dst.sendall(data)
                    time.sleep(0.5)  # the server commits
                    for s in (src, dst):
                        s.shutdown(socket.SHUT_RDWR)
                    return
                if not (session["muted"] and not from_client):
                    dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
