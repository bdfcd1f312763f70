"""Audit cost and detection benchmark (in process, no network).

1. rho = audit time / generation time, per segment: a request of P prompt + N generated tokens is
   generated step by step (prefill, then one-token decode steps with KV caches) through a chain of
   Segments; generation time of segment k is the time spent in segment k's ``step`` calls. The audit
   of segment k is one ``forward_full`` over all P + N positions (what ``Verifier.audit`` runs).
   Expected audit overhead at audit probability p is p * rho.
2. Detection: for each cheat of the catalogue and each dtype, ``trials`` requests with the cheat at a
   rotating segment; detected = the chain check or the audit names exactly the cheating segment.
   Honest false positives: failed audits over every segment of ``honest`` honest requests per dtype.
   Tolerances come from ``verisplit.impl.audit.calibrate`` on the same model and dtype (margin 4).

Usage: python bench/audit.py [--quick] [--docs]   (--docs rewrites the Audit section of
docs/BENCHMARKS.md and the calibration section of docs/determinism.md)
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import torch
from nacl.signing import SigningKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the test-only cheat catalogue
from cheatkit.cheats import CATALOGUE, make_behaviour, simulate_request  # noqa: E402

from verisplit.impl.audit.service import analyse_chain
from verisplit.impl.audit.calibrate import calibrate
from verisplit.spec.threats import CAUGHT_BY
from verisplit.impl.runtime.checkpoint import make_random_checkpoint
from verisplit.impl.runtime.loader import load_segment
from verisplit.impl.audit.verifier import Verifier
from verisplit.spec.audit import Tolerance

ROOT = Path(__file__).resolve().parent.parent


def split(layers: int, parts: int) -> list[tuple[int, int]]:
    bounds = [round(i * layers / parts) for i in range(parts + 1)]
    return list(zip(bounds, bounds[1:]))


def measure_rho(ckpt: Path, ranges: list[tuple[int, int]], prompt: int, lengths: list[int], dtype: str,
                repeats: int) -> list[dict[str, float]]:
    segments = [load_segment(ckpt, a, b, device=None, dtype=dtype) for a, b in ranges]
    rows = []
    for n in lengths:
        best_gen = [float("inf")] * len(segments)
        best_audit = [float("inf")] * len(segments)
        for rep in range(repeats):
            tokens = torch.randint(0, 512, (prompt + n,), generator=torch.Generator().manual_seed(rep))
            gen = [0.0] * len(segments)
            recorded: list[list[torch.Tensor]] = [[] for _ in segments]
            sid = f"rho-{n}-{rep}"
            for s in segments:
                s.open_session(sid, prompt + n)
            start = 0
            sizes = [prompt] + [1] * n
            x_tokens = tokens
            for size in sizes:
                x = x_tokens[start:start + size].to(segments[0].device)
                pos = torch.arange(start, start + size)
                for k, s in enumerate(segments):
                    recorded[k].append(x)
                    t0 = time.perf_counter()
                    x = s.step(sid, x, pos)
                    if x.is_cuda:
                        torch.cuda.synchronize()
                    gen[k] += time.perf_counter() - t0
                start += size
            for s in segments:
                s.close_session(sid)
            for k, s in enumerate(segments):
                inputs = torch.cat(recorded[k])
                t0 = time.perf_counter()
                out = s.forward_full(inputs, torch.arange(prompt + n))
                if out.is_cuda:
                    torch.cuda.synchronize()
                best_audit[k] = min(best_audit[k], time.perf_counter() - t0)
                best_gen[k] = min(best_gen[k], gen[k])
        rhos = [a / g for a, g in zip(best_audit, best_gen)]
        rows.append({"n": n, "gen_s": sum(best_gen), "audit_s": sum(best_audit) / len(segments),
                     "rho_mean": sum(rhos) / len(rhos), "rho_max": max(rhos)})
    return rows


def tolerance_for(ckpt: Path, ranges: list[tuple[int, int]], dtype: str) -> tuple[Tolerance, dict]:
    doc = calibrate(ckpt, dtype=dtype, split=ranges, prompt_len=12, new_tokens=24, seeds=(0, 1),
                    threads=sorted({1, torch.get_num_threads()}))
    t = doc["tolerance"]
    return Tolerance(t["dtype"], t["atol"], t["rtol"]), doc


def detection(ckpt: Path, ranges: list[tuple[int, int]], dtypes: list[str], trials: int, honest: int,
              new_tokens: int) -> tuple[dict, dict, dict]:
    keys = [SigningKey(bytes([k + 1]) * 32) for k in range(len(ranges))]
    table: dict[tuple[str, str], tuple[int, int]] = {}
    fp: dict[str, tuple[int, int, float]] = {}
    calib: dict[str, dict] = {}
    for dtype in dtypes:
        tol, doc = tolerance_for(ckpt, ranges, dtype)
        calib[dtype] = doc
        verifier = Verifier(ckpt, dtype=dtype)

        def serve(modes: list[str], rid: str, seed: int):
            segs = [load_segment(ckpt, a, b, dtype=dtype) for a, b in ranges]
            prompt = torch.randint(0, 512, (8 + seed % 7,), generator=torch.Generator().manual_seed(seed)).tolist()
            return simulate_request(segs, keys, [make_behaviour(m) for m in modes], prompt, new_tokens,
                                    request_id=rid)

        def failing(record) -> set[int]:
            analysis = analyse_chain(record)
            bad = set() if analysis.link is None else {analysis.link}
            for k in range(len(ranges)):
                if analysis.valid_steps[k] and k != analysis.link:
                    if not verifier.audit(record, k, tol, steps=analysis.valid_steps[k]).passed:
                        bad.add(k)
            return bad

        for mode in CATALOGUE:
            hits = 0
            for t in range(trials):
                target = t % len(ranges)
                modes = ["honest"] * len(ranges)
                modes[target] = mode
                hits += failing(serve(modes, f"d-{mode}-{t}", 100 + t)) == {target}
            table[(mode, dtype)] = (hits, trials)
        false_pos, audits, worst = 0, 0, 0.0
        for h in range(honest):
            record = serve(["honest"] * len(ranges), f"h-{h}", 1000 + h)
            for k in range(len(ranges)):
                v = verifier.audit(record, k, tol)
                audits += 1
                false_pos += not v.passed
                worst = max(worst, v.ratio)
        fp[dtype] = (false_pos, audits, worst)
    return table, fp, calib


def replace_section(path: Path, begin: str, end: str, text: str, heading: str) -> None:
    body = path.read_text(encoding="utf-8") if path.exists() else heading
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in body and end in body:
        body = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, body, flags=re.S)
    else:
        body = body.rstrip() + "\n\n" + block + "\n"
    path.write_text(body, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer lengths and trials")
    parser.add_argument("--docs", action="store_true", help="write the doc sections")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    machine = (f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, device {device}"
               + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""))
    command = "python bench/audit.py" + (" --quick" if args.quick else "") + (" --docs" if args.docs else "")
    lengths = [32, 128, 512] if args.quick else [32, 64, 128, 256, 512]
    trials, honest = (4, 6) if args.quick else (8, 20)
    with tempfile.TemporaryDirectory() as tmp:
        big = make_random_checkpoint(Path(tmp) / "big", layers=8, hidden=512, heads=8, kv_heads=4, max_position=1024,
                                     seed=5)
        rho_dtype = "float32" if device == "cpu" else "bfloat16"
        rho_rows = measure_rho(big, split(8, 4), 16, lengths, rho_dtype, repeats=2)
        small = make_random_checkpoint(Path(tmp) / "small", layers=6, hidden=64, heads=4, kv_heads=2,
                                       max_position=256, seed=6)
        ranges = split(6, 3)
        dtypes = ["float32", "bfloat16", "float16"]
        table, fp, calib = detection(small, ranges, dtypes, trials, honest, new_tokens=8)

    lines = [f"Machine: {machine}. Command: `{command}`.", "",
             f"rho = audit time / generation time per segment (model: random Llama, 8 layers, hidden 512, "
             f"4 segments of 2 layers, {rho_dtype}, prompt 16 tokens; best of 2; audit = one forward_full over "
             "all positions, generation = prefill + N one-token decode steps with KV cache, same process).", "",
             "| generated tokens N | generation (s, all segments) | audit of one segment (s) | rho mean | rho max "
             "| p * rho at p = 0.1 |", "|---:|---:|---:|---:|---:|---:|"]
    for r in rho_rows:
        lines.append(f"| {r['n']} | {r['gen_s']:.3f} | {r['audit_s']:.4f} | {r['rho_mean']:.3f} | "
                     f"{r['rho_max']:.3f} | {0.1 * r['rho_mean']:.4f} |")
    lines += ["", f"Detection (model: random Llama, 6 layers, hidden 64, 3 segments; {trials} requests per cell "
              "with the cheat at a rotating segment, 8 generated tokens; detected = exactly the cheating segment "
              "fails, by chain check or audit; tolerance calibrated per dtype with margin 4):", "",
              "| cheat | caught by | " + " | ".join(dtypes) + " |", "|---|---|" + "---:|" * len(dtypes)]
    for mode in CATALOGUE:
        cells = [f"{table[(mode, d)][0]}/{table[(mode, d)][1]}" for d in dtypes]
        lines.append(f"| {mode} | {CAUGHT_BY[mode]} | " + " | ".join(cells) + " |")
    lines += ["", "Honest false positives (failed audits / audits, worst honest ratio):", ""]
    for d in dtypes:
        f, n, worst = fp[d]
        lines.append(f"- {d}: {f}/{n} (worst ratio {worst:.3f}, tolerance {calib[d]['tolerance']['atol']:.3g})")
    report = "\n".join(lines)
    print(report)

    cal_lines = [f"Measured by `verisplit calibrate` (via `{command}`) on {machine}; model: random Llama, 6 layers, "
                 "hidden 64, split 0:2,2:4,4:6; prompt 12 + 24 decode positions, 2 seeds; sources: "
                 "decode (KV cache, one token per step) vs one-pass prefill re-execution, chunked prefill (chunks "
                 "of 5) vs prefill, provider/verifier torch thread counts "
                 f"{calib['float32']['threads']}. Unit: eps(dtype) * (1 + |expected|); the tolerance is "
                 "atol = rtol = margin (4) x max(largest observed drift, 1 eps) x eps.", "",
                 "| dtype | largest honest drift (eps units) | per segment | tolerance atol = rtol "
                 "| worst honest audit ratio (detection run) |",
                 "|---|---:|---|---:|---:|"]
    for d in dtypes:
        doc = calib[d]
        per = ", ".join(f"[{k}): {v:.3g}" for k, v in doc["per_segment_max_ratio_eps"].items())
        cal_lines.append(f"| {d} | {doc['max_observed_ratio_eps']:.3g} | {per} | {doc['tolerance']['atol']:.3g} "
                         f"| {fp[d][2]:.3f} |")
    cal_lines += ["", "On CPU, bf16/fp16 decode and prefill agree bit for bit here (drift 0), so their tolerance is "
                  "the 1-eps floor times the margin (honest audits of other prompts in the detection run still showed "
                  "a few eps of fp16 drift, last column: the margin, not the measured maximum, absorbed it); fp32 drifts by a few ulps through different matmul blocking. "
                  "Re-run `verisplit calibrate` on the verifier's and providers' hardware before trusting a "
                  "tolerance: GPU kernels and batch composition change the drift."]
    if args.docs:
        replace_section(ROOT / "docs" / "BENCHMARKS.md", "<!-- audit:begin -->", "<!-- audit:end -->",
                        "## Audit\n\n" + report, "# Benchmarks\n")
        replace_section(ROOT / "docs" / "determinism.md", "<!-- calibration:begin -->", "<!-- calibration:end -->",
                        "## Verification tolerance\n\n" + "\n".join(cal_lines), "# Determinism\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
