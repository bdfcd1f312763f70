"""Measure honest drift and derive the audit tolerance from it (never guessed).

What is measured, per segment of a split, on this machine: a provider computes the request step
by step (prefill then one-token decode steps with a KV cache, or a chunked prefill), the verifier
re-executes the segment's whole recorded input sequence in one stateless ``forward_full``; both
sides with each of the given torch thread counts. The distance of one measurement is the spec
judge's ratio under the unit tolerance ``atol = rtol = eps(dtype)``:
``max |o - e| / (eps * (1 + |e|))`` ("eps units").

Tolerance: ``atol = rtol = margin * max(max observed ratio, floor) * eps(dtype)``, so every honest
measurement judges at ratio <= 1 / margin. The file stores the tolerance with every measurement.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from verisplit.impl.runtime.config import ModelConfig
from verisplit.impl.runtime.loader import load_segment
from verisplit.impl.runtime.segment import Segment
from verisplit.spec.audit import Tolerance

CALIBRATION_FORMAT = "verisplit-calibration"
CALIBRATION_VERSION = 1


class CalibrationError(ValueError):
    """A calibration file or argument is malformed (the message names the field)."""


@dataclass(frozen=True)
class Schedule:
    """How a provider chops a request into steps: a prefill of ``prefill_chunk``-sized steps over the
    prompt, then one position per step."""

    name: str
    prefill_chunk: int | None  # None: the whole prompt in one step


SCHEDULES = (Schedule("decode_vs_prefill", None), Schedule("chunked_prefill", 5))


def default_split(num_layers: int) -> list[tuple[int, int]]:
    """Two segments (halves) when there are >= 2 layers, else one."""
    if num_layers < 2:
        return [(0, num_layers)]
    half = num_layers // 2
    return [(0, half), (half, num_layers)]


def parse_split(text: str, num_layers: int) -> list[tuple[int, int]]:
    """``"0:4,4:8"`` -> [(0, 4), (4, 8)]; must tile [0, num_layers)."""
    ranges: list[tuple[int, int]] = []
    try:
        for part in text.split(","):
            a, b = part.split(":")
            ranges.append((int(a), int(b)))
    except ValueError:
        raise CalibrationError(f"split: {text!r} is not a list like '0:4,4:8'") from None
    previous = 0
    for a, b in ranges:
        if a != previous or b <= a:
            raise CalibrationError(f"split: {text!r} must tile [0, {num_layers}) in order without gaps")
        previous = b
    if previous != num_layers:
        raise CalibrationError(f"split: {text!r} ends at {previous}, the model has {num_layers} layers")
    return ranges


def _run_schedule(segments: Sequence[Segment], tokens: torch.Tensor, prompt_len: int, schedule: Schedule
                  ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per segment, the concatenated (inputs, outputs) of a step-by-step run with a KV cache."""
    total = int(tokens.shape[0])
    sizes: list[int] = []
    chunk = schedule.prefill_chunk or prompt_len
    done = 0
    while done < prompt_len:
        sizes.append(min(chunk, prompt_len - done))
        done += sizes[-1]
    sizes += [1] * (total - prompt_len)
    session = f"calibrate-{schedule.name}"
    ins: list[list[torch.Tensor]] = [[] for _ in segments]
    outs: list[list[torch.Tensor]] = [[] for _ in segments]
    for segment in segments:
        segment.open_session(session, total)
    try:
        start = 0
        for size in sizes:
            x = tokens[start:start + size]
            positions = torch.arange(start, start + size, dtype=torch.int64)
            for k, segment in enumerate(segments):
                ins[k].append(x)
                x = segment.step(session, x, positions)
                outs[k].append(x)
            start += size
    finally:
        for segment in segments:
            segment.close_session(session)
    return [(torch.cat(i), torch.cat(o)) for i, o in zip(ins, outs)]


def eps_ratio(expected: torch.Tensor, observed: torch.Tensor, eps: float) -> tuple[float, float]:
    """(max_abs, ratio) of the spec judge under ``atol = rtol = eps`` (float64)."""
    e, o = expected.to(torch.float64), observed.to(torch.float64)
    diff = (o - e).abs()
    return float(diff.max()), float((diff / (eps + eps * e.abs())).max())


def calibrate(checkpoint_dir: str | Path, *, dtype: str | None = None, device: str | None = None,
              split: Sequence[tuple[int, int]] | None = None, prompt_len: int = 16, new_tokens: int = 48,
              seeds: Sequence[int] = (0, 1, 2), threads: Sequence[int] | None = None, margin: float = 4.0,
              floor: float = 1.0) -> dict[str, Any]:
    """Run the measurements and return the calibration document (see the module docstring)."""
    if margin < 1:
        raise CalibrationError(f"margin: must be >= 1, got {margin}")
    if floor <= 0:
        raise CalibrationError(f"floor: must be > 0, got {floor}")
    if prompt_len < 1 or new_tokens < 1:
        raise CalibrationError("prompt_len and new_tokens: must be >= 1")
    config = ModelConfig.from_dir(Path(checkpoint_dir))
    ranges = list(split) if split is not None else default_split(config.num_hidden_layers)
    thread_counts = sorted(set(threads or (1, max(1, torch.get_num_threads()))))
    saved_threads = torch.get_num_threads()
    segments = [load_segment(checkpoint_dir, a, b, device=device, dtype=dtype) for a, b in ranges]
    compute = segments[0].dtype
    eps = float(torch.finfo(compute).eps)
    total = prompt_len + new_tokens
    if total > config.max_position_embeddings:
        raise CalibrationError(f"prompt_len + new_tokens: {total} exceeds max_position_embeddings")
    measurements: list[dict[str, Any]] = []
    try:
        for seed in seeds:
            tokens = torch.randint(0, config.vocab_size, (total,), generator=torch.Generator().manual_seed(seed))
            for schedule in SCHEDULES:
                for provider_threads in thread_counts:
                    torch.set_num_threads(provider_threads)
                    runs = _run_schedule(segments, tokens, prompt_len, schedule)
                    for verifier_threads in thread_counts:
                        torch.set_num_threads(verifier_threads)
                        for (a, b), segment, (inputs, outputs) in zip(ranges, segments, runs):
                            expected = segment.forward_full(inputs, torch.arange(total, dtype=torch.int64))
                            max_abs, ratio = eps_ratio(expected, outputs, eps)
                            measurements.append({
                                "segment": [a, b], "source": schedule.name, "seed": seed,
                                "provider_threads": provider_threads, "verifier_threads": verifier_threads,
                                "positions": total, "max_abs": max_abs, "ratio_eps": ratio})
    finally:
        torch.set_num_threads(saved_threads)
    max_ratio = max(m["ratio_eps"] for m in measurements)
    per_segment: dict[str, float] = {}
    for m in measurements:
        key = f"{m['segment'][0]}:{m['segment'][1]}"
        per_segment[key] = max(per_segment.get(key, 0.0), m["ratio_eps"])
    scale = margin * max(max_ratio, floor)
    return {
        "format": CALIBRATION_FORMAT, "version": CALIBRATION_VERSION,
        "model_id": segments[0].model_id, "checkpoint": str(Path(checkpoint_dir).resolve()),
        "dtype": _name(compute), "device": str(segments[0].device), "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "threads": thread_counts,
        "split": [list(r) for r in ranges], "prompt_len": prompt_len, "new_tokens": new_tokens,
        "seeds": list(seeds), "unit": "eps(dtype) * (1 + |expected|)", "eps": eps,
        "margin": margin, "floor_eps": floor, "max_observed_ratio_eps": max_ratio,
        "per_segment_max_ratio_eps": per_segment, "scale_eps": scale,
        "tolerance": {"dtype": _name(compute), "atol": scale * eps, "rtol": scale * eps},
        "measurements": measurements,
    }


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def write_calibration(doc: dict[str, Any], out: str | Path) -> Path:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return path


def load_tolerance(path: str | Path) -> Tolerance:
    """The tolerance stored by ``verisplit calibrate``; malformed files raise ``CalibrationError``."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CalibrationError(f"{p}: no such calibration file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"{p}: not a JSON calibration file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != CALIBRATION_FORMAT:
        raise CalibrationError(f"{p}: format must be {CALIBRATION_FORMAT!r}")
    tol = doc.get("tolerance")
    try:
        tolerance = Tolerance(str(tol["dtype"]), float(tol["atol"]), float(tol["rtol"]))  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        raise CalibrationError(f"{p}: field 'tolerance' must hold dtype, atol and rtol") from None
    if not (tolerance.atol > 0 or tolerance.rtol > 0) or tolerance.atol < 0 or tolerance.rtol < 0:
        raise CalibrationError(f"{p}: tolerance atol/rtol must be non-negative and not both 0")
    return tolerance
