"""A raw asyncio HTTP/1.1 client for the API tests: sends exactly the bytes given (malformed ones too)
and reads the whole answer of a ``Connection: close`` request, within a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def request_bytes(method: str, target: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                  chunked: bool = False) -> tuple[bytes, list[bytes]]:
    """The request head and the body pieces to send (``chunked``: chunked transfer coding, no length)."""
    head = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    for name, value in (headers or {}).items():
        head.append(f"{name}: {value}")
    pieces: list[bytes] = []
    if body is not None:
        if chunked:
            head.append("Transfer-Encoding: chunked")
            for start in range(0, len(body), 1 << 16):
                part = body[start:start + (1 << 16)]
                pieces.append(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            pieces.append(b"0\r\n\r\n")
        else:
            head.append(f"Content-Length: {len(body)}")
            pieces = [body[i:i + (1 << 16)] for i in range(0, len(body), 1 << 16)] or [b""]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1"), pieces


def parse_answer(data: bytes) -> Answer:
    """The answer in ``data``; status 0 when the server closed without answering."""
    if not data.startswith(b"HTTP/"):
        return Answer(0, {}, data)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2:]
        body = out
    return Answer(status, headers, body)


async def send_raw(url: str, head: bytes, pieces: list[bytes], timeout: float = 20.0,
                   pause: float = 0.0) -> Answer:
    """Send ``head`` then ``pieces`` (``pause`` seconds apart) while reading the answer; a server that
    answers early and closes is fine (the rest of the body is dropped). Raises TimeoutError on a hang."""
    host, port = address(url)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)

    async def write() -> None:
        with contextlib.suppress(ConnectionError, OSError):
            writer.write(head)
            await writer.drain()
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                if pause:
                    await asyncio.sleep(pause)

    sender = asyncio.create_task(write())
    try:
        data = await asyncio.wait_for(_read_all(reader), timeout)
    finally:
        sender.cancel()
        with contextlib.suppress(BaseException):
            await sender
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return parse_answer(data)


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while True:
        try:
            chunk = await reader.read(1 << 16)
        except ConnectionError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def is_openai_error(answer: Answer) -> bool:
    """Whether the body is ``{"error": {"message": str, "type": str, "param", "code"}}``."""
    try:
        error = answer.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return (isinstance(error, dict) and isinstance(error.get("message"), str) and isinstance(error.get("type"), str)
            and "param" in error and "code" in error)
