"""Transport floor: round trip of a raw grpc.aio bidirectional stream between two processes on loopback.

This is the least a lead-mediated hop can cost with Python's asyncio gRPC stack on this machine
(no tensors, digests, signatures or compute), so the cohort benchmark's per-hop "transport" can be
read against it. Writes the "Transport floor" section of docs/BENCHMARKS.md with ``--write``.

    python bench/grpc_floor.py [--payload 2048] [--rounds 2000] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc import aio

DOCS = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- grpcfloor:begin -->", "<!-- grpcfloor:end -->"


def _identity(data: bytes) -> bytes:
    return data


async def serve(port_file: Path) -> None:
    """Echo every message of a bidi stream back, until killed."""
    async def echo(requests, context):  # type: ignore[no-untyped-def]
        async for message in requests:
            yield message

    server = aio.server()
    handler = grpc.method_handlers_generic_handler("floor.Echo", {
        "Stream": grpc.stream_stream_rpc_method_handler(echo, request_deserializer=_identity, response_serializer=_identity)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))
    await server.wait_for_termination()


async def measure(port: int, payload: int, rounds: int) -> list[float]:
    """Median-of-5 batches of ``rounds // 5`` write+read round trips, in seconds per round trip."""
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream("/floor.Echo/Stream", request_serializer=_identity, response_deserializer=_identity)()
        message = os.urandom(payload)
        for _ in range(100):
            await call.write(message)
            await call.read()
        batches = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(rounds // 5):
                await call.write(message)
                await call.read()
            batches.append((time.perf_counter() - start) / (rounds // 5))
        await call.done_writing()
        return batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payload", type=int, default=2048, help="bytes per message (2048 = one fp32 hidden-512 row)")
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return
    port_file = Path(f"/tmp/verisplit-grpc-floor-{os.getpid()}.port")
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file)])
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or server.poll() is not None:
                sys.exit("grpc_floor: the echo server did not start")
            time.sleep(0.05)
        batches = asyncio.run(measure(int(port_file.read_text()), args.payload, args.rounds))
    finally:
        server.terminate()
        server.wait()
        port_file.unlink(missing_ok=True)
    median_ms = statistics.median(batches) * 1e3
    table = (f"## Transport floor: raw grpc.aio bidi round trip between two processes\n\n"
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, grpcio {grpc.__version__}. "
             f"Command: `python bench/grpc_floor.py --payload {args.payload} --rounds {args.rounds}{' --write' if args.write else ''}`.\n\n"
             f"| payload (bytes) | round trip, median of 5 batches (ms) | min batch (ms) | max batch (ms) |\n|---:|---:|---:|---:|\n"
             f"| {args.payload} | {median_ms:.3f} | {min(batches) * 1e3:.3f} | {max(batches) * 1e3:.3f} |\n")
    print(table)
    if args.write:
        text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
        section = f"{BEGIN}\n{table}{END}"
        if BEGIN in text:
            text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: section, text, flags=re.S)
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
        DOCS.write_text(text)
        print(f"wrote {DOCS}")


if __name__ == "__main__":
    main()
