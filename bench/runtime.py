"""Segment runtime speed: un-split model vs a 4-way split chained in one process.

Prints prefill and decode tokens/s for both, the split/un-split ratio, and writes the table into the
"Runtime" section of docs/BENCHMARKS.md (between <!-- runtime:begin --> and <!-- runtime:end -->).
``--drift`` instead prints KV-cache-decode vs full-prefill drift per dtype (docs/determinism.md).

    python bench/runtime.py [--prompt 128] [--decode 64] [--repeats 3] [--dtype float32] [--no-write]
    python bench/runtime.py --drift
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from verisplit.impl.runtime.checkpoint import DEFAULT_MODEL, ensure_default_checkpoint
from verisplit.impl.runtime.device import pick_device, set_determinism
from verisplit.impl.runtime.generate import cache_vs_prefill_drift, run_chain
from verisplit.impl.runtime.loader import load_full, load_segment
from verisplit.impl.runtime.segment import Segment

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- runtime:begin -->", "<!-- runtime:end -->"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_chain(segments: list[Segment], prompt: torch.Tensor, decode: int) -> tuple[float, float]:
    """Seconds for one prefill of ``prompt`` and for ``decode`` greedy one-token steps."""
    device = segments[0].device
    sid = f"bench-{time.perf_counter_ns()}"
    for seg in segments:
        seg.open_session(sid, prompt.shape[0] + decode)
    try:
        _sync(device)
        t0 = time.perf_counter()
        logits = run_chain(segments, sid, prompt, torch.arange(prompt.shape[0]))
        _sync(device)
        t1 = time.perf_counter()
        pos = prompt.shape[0]
        for _ in range(decode):
            token = logits[-1].argmax().reshape(1)
            logits = run_chain(segments, sid, token, torch.tensor([pos]))
            pos += 1
        _sync(device)
        t2 = time.perf_counter()
    finally:
        for seg in segments:
            seg.close_session(sid)
    return t1 - t0, t2 - t1


def bench(args: argparse.Namespace) -> str:
    ckpt = ensure_default_checkpoint(Path(args.root).expanduser())
    device = pick_device(args.device)
    layers = DEFAULT_MODEL["layers"]
    full = [load_full(ckpt, device=device, dtype=args.dtype)]
    cuts = [0, layers // 4, layers // 2, 3 * layers // 4, layers]
    split = [load_segment(ckpt, a, b, device=device, dtype=args.dtype) for a, b in zip(cuts, cuts[1:])]
    prompt = torch.randint(0, DEFAULT_MODEL["vocab"], (args.prompt,), generator=torch.Generator().manual_seed(0))
    time_chain(full, prompt[:8], 4)  # warm-up
    time_chain(split, prompt[:8], 4)
    results: dict[str, tuple[float, float]] = {}
    samples: dict[str, list[tuple[float, float]]] = {"un-split": [], "4-way split": []}
    for _ in range(args.repeats):  # interleave runs so drift in machine load hits both equally
        samples["un-split"].append(time_chain(full, prompt, args.decode))
        samples["4-way split"].append(time_chain(split, prompt, args.decode))
    for name, runs in samples.items():
        prefill_s = statistics.median(r[0] for r in runs)
        decode_s = statistics.median(r[1] for r in runs)
        results[name] = (args.prompt / prefill_s, args.decode / decode_s)
    base_p, base_d = results["un-split"]
    lines = [
        "| run | prefill tok/s | decode tok/s | prefill ratio | decode ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, (p, d) in results.items():
        lines.append(f"| {name} | {p:,.0f} | {d:,.1f} | {p / base_p:.3f} | {d / base_d:.3f} |")
    machine = (f"{platform.machine()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads, device {device}"
               + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    model = (f"default model: {DEFAULT_MODEL['arch']} {layers} layers, hidden {DEFAULT_MODEL['hidden']}, "
             f"{DEFAULT_MODEL['heads']} heads / {DEFAULT_MODEL['kv_heads']} kv heads, vocab {DEFAULT_MODEL['vocab']}, "
             f"{args.dtype}")
    command = "python bench/runtime.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return "\n".join([
        "## Runtime",
        "",
        "Segment runtime throughput, batch 1: one prefill of the prompt, then greedy one-token decode steps.",
        "The 4-way split chains layers [0,2) [2,4) [4,6) [6,8) in one process (no network), so the ratio",
        "shows the runtime's own per-segment overhead. Median of the repeats, runs interleaved.",
        "",
        f"- machine: {machine}",
        f"- {model}; prompt {args.prompt} tokens, {args.decode} decode steps, {args.repeats} repeats",
        f"- command: `{command.strip()}`",
        "",
        *lines,
    ])


def drift(args: argparse.Namespace) -> str:
    """Cache-vs-prefill max-abs drift per dtype on the default model (logits and a boundary residual)."""
    ckpt = ensure_default_checkpoint(Path(args.root).expanduser())
    device = pick_device(args.device)
    ids = torch.randint(0, DEFAULT_MODEL["vocab"], (64,), generator=torch.Generator().manual_seed(0))
    lines = ["| dtype | logits drift (full model) | residual drift (layers [0,4)) | max abs residual |",
             "|---|---:|---:|---:|"]
    for dtype in ("float32", "bfloat16", "float16"):
        full = load_full(ckpt, device=device, dtype=dtype)
        half = load_segment(ckpt, 0, DEFAULT_MODEL["layers"] // 2, device=device, dtype=dtype)
        scale = half.forward_full(ids, torch.arange(64)).float().abs().max().item()
        lines.append(f"| {dtype} | {cache_vs_prefill_drift(full, ids, 16):.3g} | "
                     f"{cache_vs_prefill_drift(half, ids, 16):.3g} | {scale:.3g} |")
    return "\n".join(lines)


def write_section(section: str) -> None:
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{section}\n{END}"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    text = pattern.sub(lambda _m: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block + "\n"
    DOC.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="~/.cache/verisplit/models", help="where the default model is kept")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--drift", action="store_true", help="print cache-vs-prefill drift per dtype instead")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = parser.parse_args()
    set_determinism(0)
    if args.drift:
        print(drift(args))
        return
    section = bench(args)
    print(section)
    if not args.no_write:
        write_section(section)
        print(f"\nwrote the Runtime section of {DOC}")


if __name__ == "__main__":
    main()
