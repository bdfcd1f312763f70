"""The cheat catalogue: test-only provider behaviours that a verified split must catch.

Test-only: this package lives under ``tests/`` and is not part of the ``verisplit`` distribution. A
provider process runs one of these only when started through ``python -m cheatkit.serve --cheat MODE``
(``tests/cheatkit/serve.py``), which passes the behaviour in-process. Which check catches each kind is
the spec's threat catalogue (``verisplit.spec.threats.CAUGHT_BY``):

- *audit*: the commitment is honestly signed over the bytes sent, so the chain is valid; only
  re-executing the segment (``verisplit.impl.audit.verifier``) shows the output is not the declared
  computation.
- *chain*: the lead's chain check (``check_chain``, rule H1) or receipt check (``check_receipt``,
  rule H4) names the provider at once, without any re-execution.

Every cheat is deterministic (seeded), so tests and benchmarks reproduce exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
from nacl.signing import SigningKey

from verisplit.impl.node.behaviour import Behaviour
from verisplit.spec.threats import CAUGHT_BY

if TYPE_CHECKING:
    from verisplit.impl.runtime.segment import Segment

BEHAVIOURS: dict[str, Callable[..., Behaviour]] = {"honest": Behaviour}


def register(name: str) -> Callable[[type[Behaviour]], type[Behaviour]]:
    """Class decorator adding a behaviour under ``name``."""

    def decorator(cls: type[Behaviour]) -> type[Behaviour]:
        cls.name = name
        BEHAVIOURS[name] = cls
        return cls

    return decorator


def make_behaviour(mode: str = "honest", **params: object) -> Behaviour:
    """The behaviour named ``mode``; unknown names raise ValueError listing the known ones."""
    if mode not in BEHAVIOURS:
        raise ValueError(f"behaviour: unknown mode '{mode}' (known: {sorted(BEHAVIOURS)})")
    return BEHAVIOURS[mode](**params)


def _linears(segment: "Segment") -> list[torch.nn.Linear]:
    """The ``nn.Linear`` modules of the segment's decoder layers (not embedding / head)."""
    found: list[torch.nn.Linear] = []
    for module in segment.module.layers.modules():
        if isinstance(module, torch.nn.Linear):
            found.append(module)
    return found


@register("skip_layer")
class SkipLayer(Behaviour):
    """Skip one layer of the assigned range (the first one, or ``layer`` if given). Caught by: audit
    (the re-execution runs every layer; the committed outputs miss one residual block)."""

    def __init__(self, layer: int | None = None) -> None:
        self.layer = layer

    def prepare(self, segment: "Segment") -> None:
        victim = segment.layer_indices[0] if self.layer is None else self.layer
        segment.layer_indices = [i for i in segment.layer_indices if i != victim]


@register("prefix_range")
class PrefixRange(Behaviour):
    """Run only the first half (rounded down, at least one layer dropped) of the assigned range.
    Caught by: audit."""

    def prepare(self, segment: "Segment") -> None:
        keep = len(segment.layer_indices) // 2
        segment.layer_indices = segment.layer_indices[:keep]


@register("int8_weights")
class Int8Weights(Behaviour):
    """Quantise every decoder-layer linear weight to int8 (symmetric, per output row) and compute with
    the dequantised values. Caught by: audit (weights differ by up to half a quantisation step)."""

    def prepare(self, segment: "Segment") -> None:
        with torch.no_grad():
            for linear in _linears(segment):
                w = linear.weight.data.to(torch.float32)
                scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
                q = torch.round(w / scale).clamp(-127, 127).to(torch.int8)
                linear.weight.data.copy_((q.to(torch.float32) * scale).to(linear.weight.dtype))


def _lower_dtype(declared: torch.dtype) -> torch.dtype:
    """fp32 -> bf16; bf16/fp16 -> fp8 (e4m3) storage, computed in the declared dtype."""
    return torch.bfloat16 if declared == torch.float32 else torch.float8_e4m3fn


@register("lower_precision")
class LowerPrecision(Behaviour):
    """Compute in a lower precision than the committed dtype: a declared fp32 segment computes in bf16
    (weights, activations and KV cache), a declared fp16/bf16 segment keeps fp8 (e4m3) weights and
    activations between layers; outputs are cast back to the declared dtype before committing.
    Caught by: audit."""

    def prepare(self, segment: "Segment") -> None:
        declared = segment.dtype
        low = _lower_dtype(declared)
        module = segment.module
        original_run = module.run
        if low == torch.bfloat16:
            module.to(torch.bfloat16)
            original_open = segment.open_session

            def open_session(session_id: str, max_length: int) -> None:
                original_open(session_id, max_length)
                session = segment._sessions[session_id]
                session.caches = {i: (k.to(low), v.to(low)) for i, (k, v) in session.caches.items()}

            segment.open_session = open_session  # type: ignore[method-assign]

            def run(inputs: torch.Tensor, *args: Any) -> torch.Tensor:
                x = inputs.to(low) if inputs.is_floating_point() else inputs
                out = original_run(x, *args)
                return out if segment.is_last else out.to(declared)
        else:
            with torch.no_grad():
                for linear in _linears(segment):
                    linear.weight.data.copy_(linear.weight.data.to(low).to(declared))

            def run(inputs: torch.Tensor, *args: Any) -> torch.Tensor:
                x = inputs.to(low).to(declared) if inputs.is_floating_point() else inputs
                out = original_run(x, *args)
                return out if segment.is_last else out.to(low).to(declared)

        module.run = run  # type: ignore[method-assign]


def _noise_like(t: torch.Tensor, scale: float, seed: int, eps_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Seeded relative noise ``scale * eps * (|t| + 1) * N(0, 1)`` added to ``t`` (result in ``t``'s
    dtype); ``eps`` is the machine epsilon of ``eps_dtype`` (default: ``t``'s dtype)."""
    eps = torch.finfo(eps_dtype or t.dtype).eps if t.is_floating_point() else 1.0
    gen = torch.Generator().manual_seed(seed)
    n = torch.randn(t.shape, generator=gen, dtype=torch.float32)
    t32 = t.detach().to("cpu", torch.float32)
    return (t32 + scale * eps * (t32.abs() + 1.0) * n).to(t.dtype).to(t.device)


@register("noise")
class Noise(Behaviour):
    """Add small relative noise, ``scale`` machine epsilons of the segment's compute dtype (default
    64, a few times the honest decode-vs-prefill drift measured by ``verisplit calibrate``), to every
    committed output (fp32 logits of a bf16 segment get bf16-sized noise). Caught by: audit."""

    def __init__(self, scale: float = 64.0, seed: int = 1) -> None:
        self.scale = scale
        self.seed = seed
        self.compute_dtype: torch.dtype | None = None

    def prepare(self, segment: "Segment") -> None:
        self.compute_dtype = segment.dtype

    def output(self, step: int, inputs: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        return _noise_like(output, self.scale, self.seed * 1_000_003 + step, self.compute_dtype)


@register("other_model")
class OtherModel(Behaviour):
    """Serve another model of the same shapes: every weight of the segment re-drawn from a different
    seed with the same per-tensor mean and spread, while still declaring the original weights
    digest. Caught by: audit (and, had it declared its real digest, by the verifier's weights check)."""

    def __init__(self, seed: int = 424242) -> None:
        self.seed = seed

    def prepare(self, segment: "Segment") -> None:
        gen = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            for _, param in sorted(segment.module.named_parameters()):
                data32 = param.data.to(torch.float32)
                std = data32.std().item() if data32.numel() > 1 else 0.0
                fresh = data32.mean() + std * torch.randn(data32.shape, generator=gen)
                param.data.copy_(fresh.to(param.dtype))


@register("replay")
class Replay(Behaviour):
    """On every decode step, replay the previous step's (last-position) output instead of computing.
    Caught by: audit (the signature covers the replayed bytes, the chain is consistent)."""

    def __init__(self) -> None:
        self._previous: torch.Tensor | None = None

    def output(self, step: int, inputs: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        previous = self._previous
        if step == 0 or previous is None or previous.shape[1:] != output.shape[1:]:
            self._previous = output
            return output
        replayed = previous[-output.shape[0]:].clone() if previous.shape[0] >= output.shape[0] else output
        self._previous = replayed
        return replayed


@register("wrong_key")
class WrongKey(Behaviour):
    """Sign every commitment with a key other than the offer's. Caught by: chain check
    (``wrong_signer``, rule H1)."""

    def __init__(self, seed: int = 7) -> None:
        self._key = SigningKey(bytes([seed % 256]) * 32)

    def signing_key(self, step: int, offer_key: SigningKey) -> SigningKey:
        return self._key


@register("substitute_output")
class SubstituteOutput(Behaviour):
    """Commit to the true output but send other bytes (the output with seeded noise). Caught by:
    the lead's receipt check (``output_mismatch``, rule H4)."""

    def sent(self, step: int, committed_output: torch.Tensor) -> torch.Tensor:
        return _noise_like(committed_output, 1024.0, 99 + step)


@register("sometimes")
class Sometimes(Behaviour):
    """Cheat only on some steps: delegate the per-step hooks (``output``, ``sent``, ``signing_key``) to
    ``inner`` on steps with ``step % every == phase`` (default: every other decode step) and behave
    honestly otherwise. ``inner`` must be a per-step mode (noise, replay, substitute_output,
    wrong_key). Caught by: whatever catches ``inner`` (audit for the default ``noise``), since an
    audit covers every position of the request."""

    PER_STEP = ("noise", "replay", "substitute_output", "wrong_key")

    def __init__(self, inner: str = "noise", every: int = 2, phase: int = 1) -> None:
        if inner not in self.PER_STEP:
            raise ValueError(f"sometimes: inner mode must be one of {self.PER_STEP}, got {inner!r}")
        if every < 1 or not 0 <= phase < every:
            raise ValueError(f"sometimes: need every >= 1 and 0 <= phase < every, got {every}, {phase}")
        self.inner = make_behaviour(inner)
        self.every = every
        self.phase = phase

    def prepare(self, segment: "Segment") -> None:
        self.inner.prepare(segment)  # per-step modes only record the segment's dtype here

    def _active(self, step: int) -> bool:
        return step % self.every == self.phase

    def output(self, step: int, inputs: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        return self.inner.output(step, inputs, output) if self._active(step) else output

    def sent(self, step: int, committed_output: torch.Tensor) -> torch.Tensor:
        return self.inner.sent(step, committed_output) if self._active(step) else committed_output

    def signing_key(self, step: int, offer_key: SigningKey) -> SigningKey:
        return self.inner.signing_key(step, offer_key) if self._active(step) else offer_key


CATALOGUE: tuple[str, ...] = tuple(CAUGHT_BY)
assert set(CATALOGUE) <= set(BEHAVIOURS), "every catalogued cheat is registered"


# --- in-process driver (tests and bench/audit.py; no network) ----------------------------------

def _record_types() -> tuple[Any, Any]:
    """``(StepRecord, RequestRecord)`` from ``verisplit.impl.records.requests`` (the network's record types)."""
    from verisplit.impl.records.requests import RequestRecord, StepRecord

    return StepRecord, RequestRecord


def simulate_request(
    segments: "list[Segment]",
    keys: "list[SigningKey]",
    behaviours: list[Behaviour],
    prompt: list[int],
    new_tokens: int,
    *,
    request_id: str = "req-0",
    provider_ids: list[str] | None = None,
    fee: int = 1000,
) -> Any:
    """Serve one greedy request through ``segments`` in process, as lead and providers would over the
    network, and return its ``RequestRecord``.

    Each provider k applies ``behaviours[k]`` exactly where a real provider does (``prepare`` once here,
    so pass freshly loaded segments; then ``output`` / ``sent`` / ``signing_key`` per step) and signs a
    ``BoundaryCommitment``; the lead records the bytes it sent and received, and stops at the first
    receipt (H4) or chain (H1-H3) failure, naming the culprit, exactly as the lead's checks do.
    """
    from verisplit.impl.runtime.tensors import from_canonical, to_canonical
    from verisplit.spec.cohort import Assignment, Cohort
    from verisplit.spec.commitment import (PROTOCOL_VERSION, BoundaryCommitment, StepContext, check_chain,
                                           check_receipt, sign_commitment)
    from verisplit.spec.encoding import digest_encoded

    StepRecord, RequestRecord = _record_types()
    ids = provider_ids or [f"p{k}" for k in range(len(segments))]
    model_id = segments[0].model_id
    from verisplit.impl.runtime.tensors import dtype_name

    cohort_dtype = dtype_name(segments[0].dtype)  # the dtype every provider declares (before any cheat runs)
    cohort = Cohort(model_id, tuple(Assignment(pid, bytes(key.verify_key), seg.first_layer, seg.end_layer)
                                    for pid, key, seg in zip(ids, keys, segments)))
    for segment, behaviour in zip(segments, behaviours):
        behaviour.prepare(segment)
    session = f"sim-{request_id}"
    for segment in segments:
        segment.open_session(session, len(prompt) + new_tokens + 1)
    steps: list[Any] = []
    status, culprit, reason = "completed", None, None
    x = torch.tensor(prompt, dtype=torch.int64)
    first_position = 0
    try:
        for step in range(new_tokens):
            num = int(x.shape[0])
            positions = torch.arange(first_position, first_position + num, dtype=torch.int64)
            sent_in = to_canonical(x)
            first_digest = digest_encoded(sent_in)
            commitments, inputs, outputs = [], [], []
            for k, (segment, behaviour, key) in enumerate(zip(segments, behaviours, keys)):
                inp = from_canonical(sent_in)
                out = segment.step(session, inp, positions)
                committed = behaviour.output(step, inp, out)
                committed_bytes = to_canonical(committed)
                sent = behaviour.sent(step, committed)
                sent_bytes = committed_bytes if sent is committed else to_canonical(sent)
                unsigned = BoundaryCommitment(
                    protocol_version=PROTOCOL_VERSION, model_id=model_id, weights_digest=segment.weights_digest,
                    request_id=request_id, step=step, segment_index=k, first_layer=segment.first_layer,
                    end_layer=segment.end_layer, first_position=first_position, num_positions=num,
                    input_digest=digest_encoded(sent_in), output_digest=digest_encoded(committed_bytes),
                    signer=bytes(32), dtype=cohort_dtype)
                commitment = sign_commitment(unsigned, behaviour.signing_key(step, key))
                commitments.append(commitment)
                inputs.append(sent_in)
                outputs.append(sent_bytes)
                receipt = check_receipt(commitment, digest_encoded(sent_in), digest_encoded(sent_bytes))
                if receipt is not None and culprit is None:
                    status, culprit, reason = "aborted", ids[k], receipt[0]
                    break
                sent_in = sent_bytes
            steps.append(StepRecord(step=step, first_position=first_position, num_positions=num,
                                    first_input_digest=first_digest, commitments=commitments, inputs=inputs,
                                    outputs=outputs))
            if culprit is None:
                verdict = check_chain(cohort, commitments, first_digest,
                                      StepContext(model_id, request_id, step, first_position, num, dtype=cohort_dtype))
                if not verdict.valid:
                    status, culprit, reason = "aborted", verdict.culprit, verdict.reason
            if status == "aborted":  # a culprit-less verdict (an unsigned extra commitment) stops it too
                break
            logits = from_canonical(sent_in)
            token = int(torch.argmax(logits[-1].to(torch.float32)))
            first_position += num
            x = torch.tensor([token], dtype=torch.int64)
    finally:
        for segment in segments:
            segment.close_session(session)
    return RequestRecord(request_id=request_id, model_id=model_id, cohort=cohort, steps=steps, status=status,
                         culprit=culprit, reason=reason, fee=fee, prompt_tokens=len(prompt),
                         completion_tokens=len(steps), prices={pid: 1 for pid in ids},
                         extra={"dtype": cohort_dtype})
