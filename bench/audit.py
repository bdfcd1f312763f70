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

3. Real model (``--real``, or ``--checkpoint DIR``): the same detection table and the honest
   false-positive rate over >= 1,000 honest audits per dtype (fp32, bf16) on a real checkpoint (default:
   SmolLM2-135M-Instruct, 3 segments of 10 layers), with the tolerance calibrated on real text
   (teacher-forced windows of this repository's prose), never on random token ids, which
   under-estimate real drift (the random-id tolerance is measured too, for comparison). Requests are
   chat-formatted questions and prose windows, greedily continued; provider and verifier torch
   thread counts rotate over {1, 2} x {1, 2}. Also: the int8_weights margin (smallest distance ratio
   of that cheat, > 1 means caught) and split vs un-split logits (fp32, max-abs).

Usage: python bench/audit.py [--quick] [--docs]   (--docs rewrites the Audit section of
docs/BENCHMARKS.md and the calibration section of docs/determinism.md)
       python bench/audit.py --real [--quick] [--docs]   (--docs rewrites the "Audit on the real
model" section of docs/BENCHMARKS.md only)
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


# --- real model (--real / --checkpoint) ----------------------------------------------------------

PROSE_FILES = ("README.md", "docs/protocol.md", "docs/spec.md", "docs/conformance.md", "docs/proofs.md")
QUESTIONS = (
    "What is the capital of France?", "How do plants make their food?", "Why is the sky blue?",
    "What causes the seasons on Earth?", "Give me three tips for a good night's sleep.",
    "Explain what a prime number is.", "What is the difference between weather and climate?",
    "How does a refrigerator keep food cold?", "Write a haiku about autumn leaves.",
    "What is photosynthesis?", "Who wrote Romeo and Juliet?", "How many continents are there?",
    "What does a computer's CPU do?", "Why do we need to drink water?", "Summarise the water cycle.",
    "What is the boiling point of water at sea level?", "Name three famous painters.",
    "How do vaccines work?", "What is gravity?", "Translate 'good morning' into Spanish.",
    "What is the largest planet in our solar system?", "How do bees make honey?",
    "Suggest a name for a small bakery.", "What is a noun?", "Why do leaves change colour in autumn?",
    "What is the Pythagorean theorem?", "How does the internet work, in simple terms?",
    "What should I pack for a weekend hiking trip?",
)
SYSTEMS = (None, "Answer in one short sentence.", "You are a patient teacher.", "Be concise and friendly.",
           "You are a helpful assistant.", "Reply as a tour guide would.")
CALIBRATION_QUESTIONS = ("Tell me about the history of bread.", "How do airplanes stay in the air?")


def prose_windows(tokenizer: Any, width: int = 48) -> list[list[int]]:
    """Token windows (``width`` tokens, no overlap) of the prose paragraphs of PROSE_FILES: no
    headings, tables, code blocks or HTML comments."""
    from verisplit.impl.runtime.tokenizer import encode

    paragraphs: list[str] = []
    for name in PROSE_FILES:
        block: list[str] = []
        in_code = False
        for line in (ROOT / name).read_text(encoding="utf-8").splitlines() + [""]:
            if line.startswith("```"):
                in_code = not in_code
            if in_code or line.startswith(("```", "|", "#", "<!--")) or not line.strip():
                if block:
                    paragraphs.append(" ".join(block))
                block = []
            else:
                block.append(line.strip())
    windows = []
    for paragraph in paragraphs:
        ids = encode(tokenizer, paragraph)
        windows += [ids[i:i + width] for i in range(0, len(ids) - width + 1, width)]
    return windows


class RealPrompts:
    """Real-text prompts: chat-formatted questions (the checkpoint's template, with a rotating system
    message) and prose windows of rotating length; calibration uses texts the evaluation never sees."""

    def __init__(self, checkpoint: Path) -> None:
        from verisplit.impl.runtime.tokenizer import encode, format_chat, load_tokenizer

        self.tokenizer = load_tokenizer(checkpoint)
        windows = prose_windows(self.tokenizer)
        self.calibration_windows, self.windows = windows[:2], windows[2:]

        def chat(question: str, system: str | None) -> list[int]:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
            return encode(self.tokenizer, format_chat(messages, checkpoint_dir=checkpoint))

        self.chats = [chat(q, s) for s in SYSTEMS for q in QUESTIONS]
        self.calibration_chats = [chat(q, None) for q in CALIBRATION_QUESTIONS]

    def prompt(self, index: int) -> tuple[str, list[int]]:
        """Request ``index``: even -> a chat question, odd -> a prose window of 16-40 tokens."""
        if index % 2 == 0:
            return "chat", self.chats[(index // 2) % len(self.chats)]
        window = self.windows[(index // 2) % len(self.windows)]
        return "prose", window[:16 + (index * 7) % 25]

    def calibration_sequences(self, length: int) -> list[list[int]]:
        """The last ``length`` tokens of each calibration chat prompt (the question, not the template's
        boilerplate) and the first ``length`` of each calibration prose window."""
        return ([seq[-length:] for seq in self.calibration_chats if len(seq) >= length]
                + [seq[:length] for seq in self.calibration_windows if len(seq) >= length])


CAL_PROMPT, CAL_LENGTH = 16, 24  # calibration: 16 prefill + 8 decode positions per sequence
THREADS = [(2, 2), (1, 2), (2, 1), (1, 1)]  # (provider, verifier) torch threads, rotating per request


def calibrate_sequences(segments: list[Any], ranges: list[tuple[int, int]], sequences: list[list[int]], prompt_len: int,
                        margin: float = 4.0) -> dict[str, Any]:
    """``verisplit calibrate``'s measurement (both schedules, threads {1, 2} x {1, 2}) on the given
    token sequences instead of random ids; returns max and per-segment drift (eps units) and the
    tolerance scale ``margin x max(drift, 1)``."""
    from verisplit.impl.audit.calibrate import SCHEDULES, _run_schedule, eps_ratio

    eps = float(torch.finfo(segments[0].dtype).eps)
    per_segment = {f"{a}:{b}": 0.0 for a, b in ranges}
    saved = torch.get_num_threads()
    try:
        for seq in sequences:
            tokens = torch.tensor(seq, dtype=torch.int64)
            for schedule in SCHEDULES:
                for provider_threads in (1, 2):
                    torch.set_num_threads(provider_threads)
                    runs = _run_schedule(segments, tokens, prompt_len, schedule)
                    for verifier_threads in (1, 2):
                        torch.set_num_threads(verifier_threads)
                        for (a, b), segment, (inputs, outputs) in zip(ranges, segments, runs):
                            expected = segment.forward_full(inputs, torch.arange(len(seq), dtype=torch.int64))
                            key = f"{a}:{b}"
                            per_segment[key] = max(per_segment[key], eps_ratio(expected, outputs, eps)[1])
    finally:
        torch.set_num_threads(saved)
    worst = max(per_segment.values())
    return {"max_eps": worst, "per_segment": per_segment, "scale_eps": margin * max(worst, 1.0),
            "sequences": len(sequences), "positions": len(sequences[0]) if sequences else 0}


def split_vs_unsplit(checkpoint: Path, segments: list[Any], prompts: RealPrompts, keys: list[Any], new_tokens: int
                     ) -> dict[str, Any]:
    """fp32: max-abs of the 3-segment chain's logits vs the un-split model's (one prefill over 48 prose
    tokens), and greedy tokens of the split relay (KV cache) vs the un-split reference, 4 prompts."""
    from verisplit.impl.runtime.generate import generate_reference
    from verisplit.impl.runtime.loader import load_full
    from verisplit.impl.runtime.tensors import from_canonical

    full = load_full(checkpoint, device="cpu", dtype=torch.float32)
    tokens = torch.tensor(prompts.windows[0], dtype=torch.int64)
    positions = torch.arange(len(tokens))
    x = tokens
    for segment in segments:
        x = segment.forward_full(x, positions)
    max_abs = float((x - full.forward_full(tokens, positions)).abs().max())
    same = 0
    for i in range(4):
        _, prompt = prompts.prompt(i)
        record = simulate_request(segments, keys, [make_behaviour("honest") for _ in segments], prompt, new_tokens,
                                  request_id=f"split-{i}")
        split_tokens = [int(torch.argmax(from_canonical(s.outputs[-1])[-1])) for s in record.steps]
        same += split_tokens == generate_reference(full, prompt, new_tokens)
    return {"max_abs": max_abs, "positions": len(tokens), "greedy_equal": same, "greedy_total": 4}


def real_detection(checkpoint: Path, ranges: list[tuple[int, int]], dtype: str, prompts: RealPrompts, honest: int,
                   trials: int, new_tokens: tuple[int, int], keys: list[Any]) -> dict[str, Any]:
    """Real-text calibration, the cheat table and the honest false-positive count for one dtype."""
    segments = [load_segment(checkpoint, a, b, dtype=dtype) for a, b in ranges]
    t0 = time.perf_counter()
    progress(f"{dtype}: calibration on real text and on random ids")
    text_cal = calibrate_sequences(segments, ranges, prompts.calibration_sequences(CAL_LENGTH), prompt_len=CAL_PROMPT)
    random_seqs = [torch.randint(0, segments[0].config.vocab_size, (CAL_LENGTH,),
                                 generator=torch.Generator().manual_seed(s)).tolist() for s in range(text_cal["sequences"])]
    random_cal = calibrate_sequences(segments, ranges, random_seqs, prompt_len=CAL_PROMPT)
    t1 = time.perf_counter()
    scale = text_cal["scale_eps"]
    eps = float(torch.finfo(segments[0].dtype).eps)
    tol = Tolerance(dtype, scale * eps, scale * eps)
    verifier = Verifier(checkpoint, dtype=dtype)
    saved_threads = torch.get_num_threads()

    def serve(segs: list[Any], behaviours: list[Any], index: int, rid: str, tokens: int) -> tuple[str, Any]:
        kind, prompt = prompts.prompt(index)
        torch.set_num_threads(THREADS[index % len(THREADS)][0])
        record = simulate_request(segs, keys, behaviours, prompt, tokens, request_id=rid)
        torch.set_num_threads(THREADS[index % len(THREADS)][1])
        return kind, record

    # Cheats: ``trials`` requests per cheat, the cheat at a rotating segment; one prepared cheating
    # segment per (cheat, segment), reused across its trials.
    modes = list(CATALOGUE) + ["noise@tolerance"]
    fresh_needed = {"int8_weights", "lower_precision", "other_model"}  # they rewrite weights or the module
    layer_cheats = {"skip_layer", "prefix_range"}  # they only edit layer_indices: restored afterwards
    table: dict[str, dict[str, Any]] = {}
    for mode in modes:
        hits, ratios = 0, {}
        for target in range(len(ranges)):
            behaviour = make_behaviour("noise", scale=scale) if mode == "noise@tolerance" else make_behaviour(mode)
            cheat_segment = (load_segment(checkpoint, *ranges[target], dtype=dtype) if mode in fresh_needed
                             else segments[target])
            saved_layers = list(cheat_segment.layer_indices)
            behaviour.prepare(cheat_segment)
            behaviour.prepare = lambda segment: None  # prepared once, reused by this target's trials
            segs = list(segments)
            segs[target] = cheat_segment
            progress(f"{dtype}: {mode} at segment {target}")
            for t in range(target, trials, len(ranges)):
                behaviours = [make_behaviour("honest") for _ in segs]
                behaviours[target] = behaviour
                _, record = serve(segs, behaviours, 7919 + t, f"d-{dtype}-{mode}-{t}", new_tokens[0])
                analysis = analyse_chain(record)
                bad = set() if analysis.link is None else {analysis.link}
                for k in range(len(ranges)):
                    if analysis.valid_steps[k] and k != analysis.link:
                        verdict = verifier.audit(record, k, tol, steps=analysis.valid_steps[k])
                        if not verdict.passed:
                            bad.add(k)
                        if k == target:
                            ratios[target] = min(ratios.get(target, math.inf), verdict.ratio)
                hits += bad == {target}
            if mode in layer_cheats:
                cheat_segment.layer_indices = saved_layers
        table[mode] = {"hits": hits, "trials": trials, "min_ratio": min(ratios.values()) if ratios else None,
                       "per_segment": {f"{ranges[k][0]}:{ranges[k][1]}": v for k, v in sorted(ratios.items())}}
    t2 = time.perf_counter()

    # Honest audits: every segment of ``honest`` honest requests.
    worst = {"chat": 0.0, "prose": 0.0}
    worst_segment = {f"{a}:{b}": 0.0 for a, b in ranges}
    audits = false_pos = false_pos_random = 0
    for h in range(honest):
        if h % 50 == 0:
            progress(f"{dtype}: honest request {h}/{honest}")
        kind, record = serve(segments, [make_behaviour("honest") for _ in segments], h, f"h-{dtype}-{h}", new_tokens[1])
        for k, (a, b) in enumerate(ranges):
            verdict = verifier.audit(record, k, tol)
            drift = verdict.ratio * scale  # eps units
            audits += 1
            false_pos += not verdict.passed
            false_pos_random += drift > random_cal["scale_eps"]
            worst[kind] = max(worst[kind], drift)
            worst_segment[f"{a}:{b}"] = max(worst_segment[f"{a}:{b}"], drift)
    torch.set_num_threads(saved_threads)
    t3 = time.perf_counter()
    return {"dtype": dtype, "text_cal": text_cal, "random_cal": random_cal, "tolerance": tol, "table": table,
            "audits": audits, "false_pos": false_pos, "false_pos_random": false_pos_random, "worst": worst,
            "worst_segment": worst_segment, "seconds": {"calibration": t1 - t0, "detection": t2 - t1,
                                                        "honest": t3 - t2}}


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def real_report(checkpoint: Path, quick: bool, machine: str, command: str) -> str:
    from verisplit.impl.runtime.config import ModelConfig

    started, cpu_started = time.perf_counter(), time.process_time()
    load_before = os.getloadavg()[0]
    honest, trials = (12, 3) if quick else (334, 6)  # 334 x 3 segments = 1,002 honest audits per dtype
    new_tokens = (3, 3)  # generated tokens of cheat trials (replay, sometimes: 2 decode steps) and honest requests
    config = ModelConfig.from_dir(checkpoint)
    ranges = split(config.num_hidden_layers, 3)
    keys = [SigningKey(bytes([k + 1]) * 32) for k in range(len(ranges))]
    prompts = RealPrompts(checkpoint)
    progress("split vs un-split (fp32)")
    fp32_segments = [load_segment(checkpoint, a, b, dtype="float32") for a, b in ranges]
    parity = split_vs_unsplit(checkpoint, fp32_segments, prompts, keys, 8)
    del fp32_segments
    results = [real_detection(checkpoint, ranges, d, prompts, honest, trials, new_tokens, keys)
               for d in ("float32", "bfloat16")]
    total, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    load_after = os.getloadavg()[0]
    name = config.name_or_path or checkpoint.name
    lines = [f"Machine: {machine}. Command: `{command}` ({total / 60:.1f} min wall, {cpu / 60:.1f} min CPU; "
             f"1-minute load average {load_before:.1f} at the start, {load_after:.1f} at the end: the 2 cores were "
             f"shared with other jobs). Model: {name} "
             f"({config.num_hidden_layers} layers, hidden {config.hidden_size}, vocab {config.vocab_size}; the demo's "
             "default, converted from GGUF Q4_1), segments " + ", ".join(f"[{a}, {b})" for a, b in ranges) + ", CPU.", "",
             f"- Split equals un-split (fp32): logits of the {len(ranges)}-segment chain vs the un-split model over {parity['positions']} "
             f"prose tokens, max-abs **{parity['max_abs']:.3g}**; greedy tokens of the split relay (KV cache) equal the "
             f"un-split reference for {parity['greedy_equal']}/{parity['greedy_total']} prompts (8 tokens each).",
             "- Logits vs Hugging Face transformers (same GGUF, transformers' own dequantisation): max-abs <= 1e-4, "
             "checked by `tests/test_runtime_gguf.py::test_real_smollm2_matches_transformers_and_answers` (slow test).",
             "", "Tolerance, calibrated on real text: `verisplit calibrate`'s measurement (decode and chunked prefill vs "
             "one-pass re-execution, provider/verifier threads {1, 2} x {1, 2}) on "
             f"{results[0]['text_cal']['sequences']} sequences of {results[0]['text_cal']['positions']} real tokens "
             f"({len(CALIBRATION_QUESTIONS)} chat-formatted questions, {results[0]['text_cal']['sequences'] - len(CALIBRATION_QUESTIONS)} "
             f"prose windows, none used below; {CAL_PROMPT} prefill + {CAL_LENGTH - CAL_PROMPT} decode positions), margin 4. The same "
             "measurement on as many random-id sequences is shown for comparison (drift in eps(dtype) x (1 + |expected|)):",
             "", "| dtype | real-text drift (max; per segment) | tolerance atol = rtol | random-id drift (max) "
             "| random-id tolerance |", "|---|---|---:|---:|---:|"]
    for r in results:
        per = ", ".join(f"[{k}): {v:.3g}" for k, v in r["text_cal"]["per_segment"].items())
        rc = r["random_cal"]
        lines.append(f"| {r['dtype']} | {r['text_cal']['max_eps']:.3g}; {per} | {r['tolerance'].atol:.3g} "
                     f"| {rc['max_eps']:.3g} | {rc['scale_eps'] * float(torch.finfo(getattr(torch, r['dtype'])).eps):.3g} |")
    lines += ["", f"Detection ({trials} requests per cell, the cheat at a rotating segment, {new_tokens[0]} generated "
              "tokens; detected = exactly the cheating segment fails, by chain check or audit; min ratio = the "
              "smallest distance ratio of the cheating segment's audit, > 1 fails). `noise@tolerance` is the "
              "catalogue's noise scaled to the calibrated tolerance (the catalogue's default of 64 eps was set "
              "against a random-weight model's drift):", "",
              "| cheat | caught by | " + " | ".join(f"{r['dtype']} | min ratio" for r in results) + " |",
              "|---|---|" + "---:|---:|" * len(results)]
    for mode in results[0]["table"]:
        cells = []
        for r in results:
            row = r["table"][mode]
            ratio = row["min_ratio"]
            cells.append(f"{row['hits']}/{row['trials']} | " + ("-" if ratio is None else
                                                                "inf" if math.isinf(ratio) else f"{ratio:.3g}"))
        caught = CAUGHT_BY.get(mode, "audit")
        lines.append(f"| {mode} | {caught} | " + " | ".join(cells) + " |")
    missed = [r for r in results if r["table"]["noise"]["hits"] < r["table"]["noise"]["trials"]]
    if missed:
        lines += ["", "The catalogue's `noise` (64 eps of the compute dtype, also the inner cheat of `sometimes`) "
                  "stays inside this model's honest drift in " + ", ".join(
                      f"{r['dtype']} (real-text drift {r['text_cal']['max_eps']:.3g} eps)" for r in missed)
                  + ": no tolerance that passes honest audits can flag it (it perturbs the outputs less than honest "
                  "re-execution does); the same noise at the tolerance's scale is caught (`noise@tolerance`: "
                  + ", ".join(f"{r['dtype']} {r['table']['noise@tolerance']['hits']}/{r['table']['noise@tolerance']['trials']}"
                              for r in results) + ")."]
    lines += ["", f"Honest false positives: every segment of {honest} honest requests per dtype (prompts: "
              f"{len(QUESTIONS)} questions x {len(SYSTEMS)} system messages in the model's chat template, and prose "
              f"windows of 16-40 tokens from {', '.join(PROSE_FILES)}; greedy, {new_tokens[1]} generated tokens; threads "
              "rotating); worst honest drift in eps units, and as a fraction of the tolerance:", "",
              "| dtype | failed / audits | worst drift: chat | prose | per segment | worst / tolerance "
              "| failed under the random-id tolerance |", "|---|---:|---:|---:|---|---:|---:|"]
    for r in results:
        scale = r["text_cal"]["scale_eps"]
        worst = max(r["worst"].values())
        per = ", ".join(f"[{k}): {v:.3g}" for k, v in r["worst_segment"].items())
        lines.append(f"| {r['dtype']} | {r['false_pos']}/{r['audits']} | {r['worst']['chat']:.3g} | "
                     f"{r['worst']['prose']:.3g} | {per} | {worst / scale:.3f} | {r['false_pos_random']}/{r['audits']} |")
    int8 = "; ".join(f"{r['dtype']} {r['table']['int8_weights']['min_ratio']:.3g} (per segment: " + ", ".join(
        f"[{k}): {v:.3g}" for k, v in r["table"]["int8_weights"]["per_segment"].items()) + ")" for r in results)
    below = [f"{r['dtype']} on " + ", ".join(f"[{k})" for k, v in r["table"]["int8_weights"]["per_segment"].items()
                                             if v <= 1) for r in results
             if any(v <= 1 for v in r["table"]["int8_weights"]["per_segment"].values())]
    lines += ["", f"int8 margin (the int8_weights cheat's smallest distance ratio; > 1 is caught, the margin is how "
              f"far above 1): {int8}. " + (("Below 1, i.e. int8 weights pass the audit: " + "; ".join(below) + ". The "
              "element-wise judge (max of |o - e| / (atol + rtol |e|)) needs a tolerance wide enough for the "
              "largest honest element-wise drift, which in bf16 is of the order of the int8 rounding itself.")
              if below else "Caught on every segment."), "",
              "Time per dtype (s): " + "; ".join(
                  f"{r['dtype']}: calibration {r['seconds']['calibration']:.0f}, cheats {r['seconds']['detection']:.0f}, "
                  f"honest audits {r['seconds']['honest']:.0f}" for r in results) + "."]
    return "\n".join(lines)


def insert_after(path: Path, anchor: str, begin: str, end: str, text: str) -> None:
    """Replace the ``begin``..``end`` block of ``path``, or insert it after the line ``anchor``."""
    body = path.read_text(encoding="utf-8")
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in body and end in body:
        body = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, body, flags=re.S)
    elif anchor in body:
        body = body.replace(anchor, f"{anchor}\n\n{block}", 1)
    else:
        body = body.rstrip() + "\n\n" + block + "\n"
    path.write_text(body, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer lengths and trials")
    parser.add_argument("--docs", action="store_true", help="write the doc sections")
    parser.add_argument("--real", action="store_true",
                        help="real-model mode on the default model (SmolLM2-135M-Instruct, fetched once)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="real-model mode on this HF checkpoint")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    machine = (f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, device {device}"
               + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""))
    command = ("python bench/audit.py" + (" --real" if args.real else "")
               + (f" --checkpoint {args.checkpoint}" if args.checkpoint else "")
               + (" --quick" if args.quick else "") + (" --docs" if args.docs else ""))
    if args.real or args.checkpoint is not None:
        checkpoint = args.checkpoint
        if checkpoint is None:
            from verisplit.impl.runtime.default_model import default_cache_dir, ensure_default_checkpoint

            checkpoint = ensure_default_checkpoint(default_cache_dir(), progress=True)
        report = real_report(checkpoint, args.quick, machine, command)
        print(report)
        if args.docs:
            insert_after(ROOT / "docs" / "BENCHMARKS.md", "<!-- audit:end -->", "<!-- audit-real:begin -->",
                         "<!-- audit-real:end -->", "## Audit on the real model (CPU, no GPU)\n\n" + report)
        return
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
