"""bench/wan.py's link emulator adds at least the delay and serialisation time it promises
(functional lower bounds only: no upper timing bound, the machine may be loaded)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import wan  # noqa: E402  (bench/wan.py)


async def _round_trip(port: int, payload: bytes) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.perf_counter()
    writer.write(payload)
    await writer.drain()
    got = 0
    while got < len(payload):
        got += len(await reader.read(65536))
    elapsed = time.perf_counter() - t0
    writer.close()
    return elapsed


async def _echo_server() -> tuple[asyncio.AbstractServer, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_proxy_adds_the_delay_and_the_serialisation_time() -> None:
    async def scenario() -> tuple[float, float, bytes]:
        server, port = await _echo_server()
        settings = wan.LinkSettings(delay_s=0.03)
        proxy = wan.LinkProxy(wan.free_port(), ("127.0.0.1", port), settings)
        await proxy.start()
        delayed = await _round_trip(proxy.listen_port, b"x" * 1000)
        settings.delay_s, settings.bandwidth_bps = 0.0, 20e6
        payload = bytes(range(256)) * 1024  # 256 KiB: >= 0.105 s of serialisation at 20 Mbit/s
        paced = await _round_trip(proxy.listen_port, payload)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.listen_port)
        writer.write(payload)
        echoed = await reader.readexactly(len(payload))
        writer.close()
        await proxy.close()
        server.close()
        return delayed, paced, echoed

    delayed, paced, echoed = asyncio.run(scenario())
    assert delayed >= 2 * 0.03  # one-way delay on the way out and on the way back
    assert paced >= (256 * 1024 * 8 / 20e6) * 0.99  # the echo pipelines, so the bytes pay one serialisation
    assert echoed == bytes(range(256)) * 1024  # bytes arrive intact and in order
