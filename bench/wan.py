"""WAN benchmark: a cohort of 3 provider processes behind an emulated wide-area link on every hop.

Usage:
    python bench/wan.py [--tokens 48] [--rtt 0,10,40] [--speculative 4] [--random] [--write]
    python bench/wan.py proxy --link LISTEN_PORT:HOST:PORT ...   (the link emulator process; stdin: "set MS MBPS")

The link emulator is a user-space TCP proxy (asyncio), one listening port per link, in its own
process. Each direction of each connection has a timestamped queue: a chunk read at time t leaves
the sender when the link is free (bandwidth cap: len/bandwidth of serialisation time per chunk) and
is written to the receiver at that time + the one-way delay; nothing sleeps per write, so a burst of
chunks pays the delay once, like a real pipe. Every link goes through it: providers advertise the
proxy's port, so the lead's connections and, on the direct path, provider k's connection to k+1 (the
lead signs k+1's advertised endpoint into k's session opening) are all delayed.
The proxy's own floor (added round trip at 0 ms) is measured first and reported.

For each RTT (one-way delay = RTT / 2 on every link) the lead (this process) runs greedy requests
lead-mediated (2K one-way trips per token for K providers), over the direct path (K + 1,
``Lead.direct``), and with speculative decoding
(``Lead.speculative``: n-gram drafts verified in one traversal), on (a) an open chat prompt and (b) a
lookup-friendly prompt (rewrite a given text). Decode rate excludes prefill (and the tokens of the
first step). The latency limit per traversal is compute + hops x one-way delay, with compute = the
un-split model's per-token decode time measured in this session; each rate is given as a ratio of
the limit of its own path (hops = 2K lead-mediated, K + 1 direct) and of the direct limit. Throughput: 8
concurrent sessions at the largest RTT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- wan:begin -->", "<!-- wan:end -->"
HOPS = 3
CHUNK = 65536


# ---- the link emulator ----------------------------------------------------------------------------

class LinkSettings:
    """One-way delay (seconds) and bandwidth cap (bits/s, 0 = unlimited), shared by every link."""

    def __init__(self, delay_s: float = 0.0, bandwidth_bps: float = 0.0) -> None:
        self.delay_s = delay_s
        self.bandwidth_bps = bandwidth_bps


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, settings: LinkSettings) -> None:
    """Copy reader -> writer through a timestamped queue: each chunk is due at (the time the link
    finishes serialising it) + the one-way delay; a writer task delivers chunks when they are due."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                break
            writer.write(data)
            await writer.drain()

    task = asyncio.create_task(deliver())
    link_free = 0.0
    try:
        while True:
            data = await reader.read(CHUNK)
            now = loop.time()
            start = max(now, link_free)
            link_free = start + (len(data) * 8 / settings.bandwidth_bps if settings.bandwidth_bps else 0.0)
            queue.put_nowait((link_free + settings.delay_s, data))
            if not data:
                break
        await task
    except (ConnectionError, asyncio.CancelledError):
        task.cancel()
    finally:
        try:
            writer.close()
        except Exception:  # noqa: BLE001 - the peer may be gone already
            pass


class LinkProxy:
    """A TCP proxy on ``listen_port`` forwarding to ``target`` (host, port) with ``settings``."""

    def __init__(self, listen_port: int, target: tuple[str, int], settings: LinkSettings) -> None:
        self.listen_port = listen_port
        self.target = target
        self.settings = settings
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.listen_port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        for stream in (writer, up_writer):
            sock = stream.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(_pipe(reader, up_writer, self.settings), _pipe(up_reader, writer, self.settings),
                             return_exceptions=True)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def proxy_main(links: list[str]) -> None:
    """The emulator process: one LinkProxy per ``LISTEN:HOST:PORT``; stdin lines ``set MS MBPS``."""
    settings = LinkSettings()
    proxies = []
    for spec in links:
        listen, host, port = spec.split(":")
        proxy = LinkProxy(int(listen), (host, int(port)), settings)
        await proxy.start()
        proxies.append(proxy)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        parts = line.split()
        if parts and parts[0] == "set":
            settings.delay_s = float(parts[1]) / 1000.0
            settings.bandwidth_bps = float(parts[2]) * 1e6 if len(parts) > 2 else 0.0
            print("ok", flush=True)


class ProxyProcess:
    """The emulator running in a child process (so its event loop never competes with the lead's)."""

    def __init__(self, links: list[tuple[int, str, int]]) -> None:
        args = [f"{a}:{h}:{p}" for a, h, p in links]
        self.child = subprocess.Popen([sys.executable, __file__, "proxy", "--link", *args], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
        assert self.child.stdout is not None and self.child.stdout.readline().strip() == "ready"

    def set(self, one_way_ms: float, mbps: float = 0.0) -> None:
        assert self.child.stdin is not None and self.child.stdout is not None
        self.child.stdin.write(f"set {one_way_ms} {mbps}\n")
        self.child.stdin.flush()
        assert self.child.stdout.readline().strip() == "ok"

    def close(self) -> None:
        if self.child.stdin is not None:
            self.child.stdin.close()
        self.child.terminate()
        self.child.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def echo_server() -> int:
    """A blocking echo server in a daemon thread; returns its port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        while True:
            conn, _ = server.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return int(server.getsockname()[1])


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(CHUNK):
            conn.sendall(data)


def round_trip(port: int, payload: int, rounds: int) -> float:
    """Median seconds for ``payload`` bytes out and back through 127.0.0.1:``port``."""
    data = os.urandom(payload)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        samples = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            s.sendall(data)
            got = 0
            while got < payload:
                got += len(s.recv(CHUNK))
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


# ---- the benchmark ---------------------------------------------------------------------------------

CHAT = [{"role": "user", "content": "What are some good ways to spend a rainy weekend at home?"}]
TEXT = ("The old lighthouse stood at the edge of the cliff for more than a hundred years. Every night its keeper "
        "climbed the narrow stairs, lit the lamp and watched the ships pass safely through the dark water. When the "
        "keeper grew old, the village children took turns helping him, and they learned the names of every ship.")
LOOKUP = [{"role": "user", "content": "Repeat the following text exactly, word for word:\n\n" + TEXT}]


def unsplit_step_s(checkpoint: Path, prompt: list[int], tokens: int) -> float:
    """Median-free mean seconds per decode step of the whole model in this process (greedy, fp32)."""
    import torch

    from verisplit.impl.runtime.loader import load_full

    seg = load_full(checkpoint, device="cpu", dtype=torch.float32)
    seg.open_session("u", len(prompt) + tokens + 1)
    token = int(torch.argmax(seg.step("u", torch.tensor(prompt), torch.arange(len(prompt)))[-1]))
    t0 = time.perf_counter()
    for i in range(tokens):
        token = int(torch.argmax(seg.step("u", torch.tensor([token]), torch.tensor([len(prompt) + i]))[-1]))
    return (time.perf_counter() - t0) / tokens


IDENTITY_PROMPTS = [
    [{"role": "user", "content": "Write a short poem about the sea."}],
    [{"role": "user", "content": "Explain what a hash function is, in two sentences."}],
    [{"role": "user", "content": "Summarise this text in one sentence:\n\n" + TEXT}],
    LOOKUP,
]


def identity_check(checkpoint: Path, prompts: list[list[int]], tokens: int, k: int) -> dict[str, Any]:
    """In one process: plain greedy (one position per step) vs speculative greedy (n-gram drafts of up
    to k verified in one step, KV rolled back on rejection) over the same fp32 weights. Counts prompts
    whose token sequences differ and the steps whose argmax per row differs from plain decoding."""
    import torch

    from verisplit.impl.runtime.draft import greedy_accept, propose_ngram
    from verisplit.impl.runtime.loader import load_full

    seg = load_full(checkpoint, device="cpu", dtype=torch.float32)
    differ, total_steps = 0, 0
    for index, prompt in enumerate(prompts):
        seg.open_session(f"p{index}", len(prompt) + tokens + k + 1)
        logits = seg.step(f"p{index}", torch.tensor(prompt), torch.arange(len(prompt)))
        plain = [int(torch.argmax(logits[-1]))]
        while len(plain) < tokens:
            pos = len(prompt) + len(plain) - 1
            plain.append(int(torch.argmax(seg.step(f"p{index}", torch.tensor([plain[-1]]), torch.tensor([pos]))[-1])))
        seg.close_session(f"p{index}")
        seg.open_session(f"s{index}", len(prompt) + tokens + k + 1)
        history, pending, spec, first = list(prompt), list(prompt), [], 0
        while len(spec) < tokens:
            draft = propose_ngram(history, min(k, tokens - len(spec) - 1))
            step = pending + draft
            rows = seg.step(f"s{index}", torch.tensor(step), torch.arange(first, first + len(step)))
            new = greedy_accept(draft, rows[len(pending) - 1:])
            total_steps += 1
            spec.extend(new)
            history.extend(new)
            first = first + len(pending) + len(new) - 1
            pending = [new[-1]]
        seg.close_session(f"s{index}")
        differ += spec[:tokens] != plain
    return {"prompts": len(prompts), "differ": differ, "steps": total_steps, "tokens": tokens, "k": k}


def modes(k: int) -> list[tuple[str, int, bool]]:
    """(label, speculative draft length, direct path) of every measured mode."""
    return [("lead-mediated", 0, False), ("direct", 0, True), (f"speculative k={k}", k, False),
            (f"speculative k={k} + direct", k, True)]


async def one_request(lead: Any, prompt: list[int], tokens: int) -> dict[str, Any]:
    from verisplit.impl.node.lead import SamplingParams

    run = lead.start(prompt, SamplingParams(max_tokens=tokens, temperature=0.0))
    stamps: list[float] = []
    out: list[int] = []
    async for token in run.tokens():
        stamps.append(time.perf_counter())
        out.append(token)
    first_burst = sum(1 for s in stamps if s <= stamps[0] + 1e-3)
    span = stamps[-1] - stamps[0]
    rate = (len(out) - first_burst) / span if span > 0 else float("nan")
    t = run.timings
    return {"rate": rate, "tokens": out, "spec": run.speculative, "hop_rt": t.round_trip / max(t.hops, 1),
            "hop_crypto": (t.digest + t.verify) / max(t.hops, 1), "span": span, "count": len(out)}


async def measure(checkpoint: Path, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from verisplit.impl.cli.net import run_lead
    from verisplit.impl.node.lead import Lead
    from verisplit.impl.node.procs import ProcessGroup, verisplit_command
    from verisplit.impl.records.keys import create_key_file
    from verisplit.impl.runtime.tokenizer import encode, format_chat, load_tokenizer

    tokenizer = load_tokenizer(checkpoint)
    prompts = {"chat": encode(tokenizer, format_chat(CHAT, checkpoint)),
               "lookup": encode(tokenizer, format_chat(LOOKUP, checkpoint))}
    result: dict[str, Any] = {"prompt_tokens": {k: len(v) for k, v in prompts.items()}}
    echo = echo_server()
    floor_port = free_port()
    lead = Lead(checkpoint, workdir / "lead", retention=200)
    listen = f"127.0.0.1:{free_port()}"
    stop = asyncio.Event()
    server = asyncio.create_task(run_lead(lead, listen, "127.0.0.1", 0, None, None, None, stop))
    layers = lead.model_spec.num_layers
    bounds = [layers * k // HOPS for k in range(HOPS + 1)]
    real = [free_port() for _ in range(HOPS)]
    front = [free_port() for _ in range(HOPS)]
    proxy = ProxyProcess([(floor_port, "127.0.0.1", echo)] + [(f, "127.0.0.1", r) for f, r in zip(front, real)])
    try:
        proxy.set(0)
        direct, via = round_trip(echo, 16384, 300), round_trip(floor_port, 16384, 300)
        proxy.set(5)
        via5 = round_trip(floor_port, 16384, 20)
        result["floor"] = {"direct_rt": direct, "proxy_rt": via, "proxy_rt_5ms": via5}
        result["compute"] = unsplit_step_s(checkpoint, prompts["chat"], 32)
        result["identity"] = identity_check(checkpoint, [encode(tokenizer, format_chat(m, checkpoint))
                                                         for m in IDENTITY_PROMPTS], args.tokens, args.speculative)
        with ProcessGroup(workdir / "logs") as group:
            children = []
            for k in range(HOPS):
                key = workdir / f"p{k}.key"
                create_key_file(key)
                children.append(group.spawn(f"p{k}", verisplit_command(
                    "provider", "serve", "--checkpoint", str(checkpoint), "--layers", f"{bounds[k]}:{bounds[k + 1]}",
                    "--key", str(key), "--listen", f"127.0.0.1:{real[k]}", "--advertise", f"127.0.0.1:{front[k]}",
                    "--lead", listen, "--provider-id", f"p{k}", "--kv-budget-mb", "2048", "--threads", "1")))
            await asyncio.to_thread(group.wait_ready, children, 300)
            proxy.set(0)
            lead.speculative = 0
            await one_request(lead, prompts["chat"], 8)  # warm every process and channel
            rows = []
            computes = [result["compute"]]
            for rtt in args.rtt:
                computes.append(unsplit_step_s(checkpoint, prompts["chat"], 16))  # least-contended sample wins
                proxy.set(rtt / 2)
                for name, prompt in prompts.items():
                    for mode, k, direct in modes(args.speculative):
                        lead.speculative, lead.direct = k, direct
                        reps = [await one_request(lead, prompt, args.tokens) for _ in range(args.repeat)]
                        reps.sort(key=lambda x: x["rate"])
                        r = dict(reps[len(reps) // 2], low=reps[0]["rate"], high=reps[-1]["rate"])
                        rows.append({"rtt": rtt, "prompt": name, "mode": mode, **r})
                        print(f"rtt {rtt} {name} {mode}: {r['rate']:.2f} tok/s {r['spec'] or ''}", flush=True)
            result["rows"] = rows
            result["compute"] = min(computes)
            result["computes"] = computes
            conc = []
            rtt = max(args.rtt)
            proxy.set(rtt / 2)
            for mode, k, direct in modes(args.speculative):
                lead.speculative, lead.direct = k, direct
                t0 = time.perf_counter()
                runs = await asyncio.gather(*(one_request(lead, prompts["chat" if i % 2 else "lookup"], args.tokens)
                                              for i in range(args.sessions)))
                wall = time.perf_counter() - t0
                conc.append({"rtt": rtt, "mode": mode, "tok_s": sum(r["count"] for r in runs) / wall, "wall": wall})
                print(f"concurrent {mode}: {conc[-1]['tok_s']:.2f} tok/s", flush=True)
            result["concurrent"] = conc
    finally:
        proxy.close()
        stop.set()
        await server
    return result


def machine() -> str:
    import torch

    cpu = platform.processor() or "unknown cpu"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"


def loopback_lines(result: dict[str, Any]) -> list[str]:
    """The 0 ms rows against the un-split model, with the per-hop breakdown of the lead's round trip."""
    c = result["compute"]
    out = []
    for row in result["rows"]:
        if row["rtt"] == 0 and row["mode"] == "lead-mediated":
            other = row["hop_rt"] - c / HOPS
            out.append(f"Loopback (0 ms through the proxy), {row['prompt']}: {row['rate']:.2f} tok/s = "
                       f"{row['rate'] * c:.2f}x un-split; per hop (mean over every step, prefill included) the lead waits {row['hop_rt'] * 1e3:.2f} ms = "
                       f"compute share {c / HOPS * 1e3:.2f} ms + {other * 1e3:.2f} ms transport, framing and provider "
                       f"crypto (+ {row['hop_crypto'] * 1e3:.2f} ms lead digest/checks).  ")
    return out


def render(result: dict[str, Any], model: str, command: str, load: str) -> str:
    c = result["compute"]
    f = result["floor"]
    lines = [BEGIN, "", f"Command: `{command}`  ", f"Machine: {machine()}; load average before: {load}  ",
             f"Model: {model}, fp32, CPU, {HOPS} providers (1 torch thread each) + the lead in one process, all on "
             "this machine; greedy; prompt tokens: " + ", ".join(f"{k} {v}" for k, v in result["prompt_tokens"].items()),
             "",
             f"Proxy floor (16 KiB echo round trip): direct {f['direct_rt'] * 1e3:.3f} ms, through the proxy at 0 ms "
             f"{f['proxy_rt'] * 1e3:.3f} ms (+{(f['proxy_rt'] - f['direct_rt']) * 1e3:.3f} ms per round trip, two "
             f"proxy crossings); at 5 ms one-way {f['proxy_rt_5ms'] * 1e3:.2f} ms (>= 10 ms expected).  ",
             f"Compute per token (un-split model, this process, same session; the least contended of "
             f"{len(result['computes'])} samples taken before each RTT block, which spread "
             f"{min(result['computes']) * 1e3:.0f}-{max(result['computes']) * 1e3:.0f} ms): {c * 1e3:.1f} ms = "
             f"{1 / c:.1f} tok/s. Each rate: the median of {result['repeat']} runs (spread in brackets).  ",
             f"Latency limit per traversal = compute + hops x one-way delay: lead-mediated hops = 2K = {2 * HOPS}, "
             f"direct hops = K + 1 = {HOPS + 1}. Ratios are measured tok/s / (1 / limit).  ",
             f"Greedy identity, in one process (fp32): speculative k={result['identity'].get('k', '')} vs plain greedy over "
             f"{result['identity']['prompts']} chat prompts x {result['identity']['tokens']} tokens "
             f"({result['identity']['steps']} verification steps): {result['identity']['differ']} prompt(s) differ.",
             ""] + loopback_lines(result) + ["",
             "| RTT | prompt | mode | tok/s | latency limit of its path, tok/s | ratio to it | ratio to the direct limit "
             "| vs lead-mediated | acceptance | tokens == lead-mediated | lead per hop: round trip / checks |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    plain: dict[tuple[int, str], dict[str, Any]] = {}
    for row in result["rows"]:
        if row["mode"] == "lead-mediated":
            plain[(row["rtt"], row["prompt"])] = row
    for row in result["rows"]:
        d = row["rtt"] / 2 / 1e3
        lim_d = 1 / (c + (HOPS + 1) * d)
        lim_own = lim_d if "direct" in row["mode"] else 1 / (c + 2 * HOPS * d)
        base = plain[(row["rtt"], row["prompt"])]
        spec = row["spec"]
        acc = f"{spec['accepted']}/{spec['drafted']} = {spec['acceptance']:.2f}" if spec else "—"
        same = "—" if row is base else ("yes" if row["tokens"] == base["tokens"] else "**no**")
        lines.append(f"| {row['rtt']} ms | {row['prompt']} | {row['mode']} | {row['rate']:.2f} "
                     f"({row['low']:.1f}-{row['high']:.1f}) | {lim_own:.2f} | "
                     f"{row['rate'] / lim_own:.2f}x | {row['rate'] / lim_d:.2f}x | {row['rate'] / base['rate']:.2f}x | "
                     f"{acc} | {same} | "
                     f"{row['hop_rt'] * 1e3:.2f} / {row['hop_crypto'] * 1e3:.2f} ms |")
    lines += ["", f"Throughput, {len(result['concurrent']) and 'concurrent'} sessions (half chat, half lookup):", "",
              "| RTT | mode | sessions | aggregate tok/s (incl. prefill) | wall s |", "|---|---|---|---|---|"]
    for row in result["concurrent"]:
        lines.append(f"| {row['rtt']} ms | {row['mode']} | {result['sessions']} | {row['tok_s']:.2f} | {row['wall']:.1f} |")
    lines += ["", END]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "proxy":
        parser = argparse.ArgumentParser(prog="wan.py proxy")
        parser.add_argument("--link", nargs="+", required=True)
        asyncio.run(proxy_main(parser.parse_args(sys.argv[2:]).link))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rtt", type=lambda s: [int(x) for x in s.split(",")], default=[0, 10, 40])
    parser.add_argument("--speculative", type=int, default=4)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration (the median is reported)")
    parser.add_argument("--random", action="store_true", help="use the random tiny model, not SmolLM2-135M")
    parser.add_argument("--write", action="store_true", help="update the WAN section of docs/BENCHMARKS.md")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    with tempfile.TemporaryDirectory() as tmp:
        if args.random:
            from verisplit.impl.runtime.checkpoint import make_random_checkpoint

            checkpoint = make_random_checkpoint(Path(tmp) / "ckpt", layers=6, hidden=256, heads=4, kv_heads=2,
                                                vocab=4096, max_position=1024, seed=3)
            model = "random tiny model (6 layers, hidden 256)"
        else:
            from verisplit.impl.runtime.default_model import default_cache_dir, ensure_default_checkpoint

            checkpoint = ensure_default_checkpoint(default_cache_dir())
            model = "SmolLM2-135M-Instruct (the default model, 30 layers)"
        result = asyncio.run(measure(checkpoint, Path(tmp), args))
    result["sessions"] = args.sessions
    result["repeat"] = args.repeat
    command = "python bench/wan.py " + " ".join(sys.argv[1:])
    text = render(result, model, command, load)
    print(text)
    if args.write:
        doc = ROOT / "docs" / "BENCHMARKS.md"
        current = doc.read_text(encoding="utf-8")
        if BEGIN in current:
            current = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: text, current, flags=re.S)
        else:
            current = current.rstrip("\n") + "\n\n## WAN: emulated links, speculative decoding (issue 16)\n\n" + text + "\n"
        doc.write_text(current, encoding="utf-8")


if __name__ == "__main__":
    main()
