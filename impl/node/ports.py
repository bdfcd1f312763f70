"""Binding a serving process's ports before anything else, and its stop signals.

Invariants: no port is ever shared (gRPC servers get ``grpc.so_reuseport`` = 0 from ``grpc_options``;
HTTP sockets never set SO_REUSEPORT); a used or unusable address raises ``BindError`` naming the
option and the address, before the process has written anything; the first SIGINT/SIGTERM/SIGHUP
sets ``stop``, a second one sets ``hard`` (cut what is still running now).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
from pathlib import Path
from typing import Any

BACKLOG = 512


class BindError(OSError):
    """An address could not be bound; the message names the option and the address."""


def _why(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use (is another verisplit process running there?)"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available on this machine"
    return exc.strerror or str(exc)


def _address(host: str, port: int) -> tuple[int, tuple[Any, ...]]:
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError(f"{host}:{port}: cannot resolve {host!r} ({exc.strerror})") from None
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def bind_socket(what: str, host: str, port: int) -> socket.socket:
    """A listening TCP socket on HOST:PORT (SO_REUSEADDR for restarts, never SO_REUSEPORT)."""
    family, sockaddr = _address(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise BindError(f"{what} {_show(host, port)}: {_why(exc)}") from None
    return sock


def probe_port(what: str, host: str, port: int) -> None:
    """Raise ``BindError`` if HOST:PORT is taken right now (port 0 is never taken)."""
    if port != 0:
        bind_socket(what, host, port).close()


def bind_grpc(server: Any, what: str, listen: str, tls_cert: Path | None = None, tls_key: Path | None = None) -> int:
    """Add LISTEN to a ``grpc.aio`` server (binding it now); returns the bound port or raises ``BindError``."""
    from verisplit.impl.node.framing import parse_host_port, server_credentials

    host, port = parse_host_port(listen, what)
    probe_port(what, host, port)  # a clean message before gRPC logs its own bind failure
    try:
        if tls_cert is not None and tls_key is not None:
            bound = server.add_secure_port(listen, server_credentials(tls_cert, tls_key))
        else:
            bound = server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise BindError(f"{what} {listen}: could not bind ({exc})") from None
    if bound == 0:
        raise BindError(f"{what} {listen}: could not bind")
    return int(bound)


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def install_stop(stop: asyncio.Event, hard: asyncio.Event | None = None) -> None:
    """First SIGINT/SIGTERM/SIGHUP sets ``stop``; a second one sets ``hard``."""
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set() and hard is not None:
            hard.set()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal)
