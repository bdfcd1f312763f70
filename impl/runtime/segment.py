"""A loaded layer range with per-session KV caches: the compute core of providers and verifiers.

Invariants:
- ``step`` accepts only consecutive positions that continue the session (``positions[0]`` equals the
  tokens already cached) or roll it back (rule K1, ``verisplit.spec.commitment.step_follows``: a start
  after the previous step's start and at most the cached length; the cache is truncated there and the
  step overwrites the rows from that position on), so a cache never holds holes, and rows before a
  step's start are never rewritten by a later step.
- Sessions are isolated: each owns its K/V tensors; closing frees them.
- Inputs are validated before any cache write, so a rejected call leaves the session unchanged.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Sequence

import torch

from verisplit.impl.runtime.config import ModelConfig
from verisplit.impl.runtime.errors import SegmentInputError, SessionError
from verisplit.impl.runtime.model import SegmentModel, checkpoint_tensor_names, rope_inv_freq
from verisplit.impl.runtime.tensors import digest_named_tensors
from verisplit.spec.commitment import step_follows


@dataclass
class _Session:
    caches: dict[int, tuple[torch.Tensor, torch.Tensor]]
    max_length: int
    length: int = 0
    last_first: int = -1  # the previous step's first position (-1 before the first step)


class Segment:
    """Layers ``[first_layer, end_layer)`` of one model on one device in one dtype."""

    def __init__(
        self,
        config: ModelConfig,
        first_layer: int,
        end_layer: int,
        module: SegmentModel,
        *,
        model_id: str,
        device: torch.device,
        dtype: torch.dtype,
        weights_digest: bytes,
        loaded_files: Sequence[str] = (),
    ) -> None:
        self.config = config
        self.first_layer = first_layer
        self.end_layer = end_layer
        self.is_first = first_layer == 0
        self.is_last = end_layer == config.num_hidden_layers
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.weights_digest = weights_digest
        self.layer_indices: list[int] = list(range(first_layer, end_layer))
        self.loaded_files: list[str] = list(loaded_files)
        self.module = module.eval()
        self.inv_freq = rope_inv_freq(config, device)
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return (f"Segment({self.model_id!r}, layers [{self.first_layer}, {self.end_layer}), "
                f"{self.dtype}, {self.device}, sessions={len(self._sessions)})")

    # --- sub-ranges -----------------------------------------------------------------------
    def sub_segment(self, first_layer: int, end_layer: int) -> "Segment":
        """A segment running layers ``[first_layer, end_layer)`` of this one, sharing its weights.

        A cohort may assign a provider any sub-range of its offer (spec rule C1). The view owns the
        embedding iff it starts at layer 0 and the norm/head iff it ends at the last layer, keeps any
        layer selection already applied to ``layer_indices``, and has its own sessions. Invariant: its
        ``weights_digest`` equals that of ``load_segment(checkpoint, first_layer, end_layer)`` in the
        same dtype (same checkpoint names, same bytes), so audits of a sub-range compare like with like.
        """
        if (first_layer, end_layer) == (self.first_layer, self.end_layer):
            return self
        if not (isinstance(first_layer, int) and isinstance(end_layer, int)
                and self.first_layer <= first_layer < end_layer <= self.end_layer):
            raise SegmentInputError(f"layer range: [{first_layer}, {end_layer}) is not a non-empty sub-range of "
                                    f"the loaded [{self.first_layer}, {self.end_layer})")
        with torch.device("meta"):
            module = SegmentModel(self.config, first_layer, end_layer)
        parent_state = self.module.state_dict(keep_vars=True)
        state = {key: parent_state[key] for key in module.state_dict(keep_vars=True)}
        module.load_state_dict(state, strict=True, assign=True)
        names = checkpoint_tensor_names(module, self.config)
        view = Segment(self.config, first_layer, end_layer, module, model_id=self.model_id, device=self.device,
                       dtype=self.dtype, weights_digest=digest_named_tensors({names[k]: v for k, v in state.items()}),
                       loaded_files=self.loaded_files)
        view.layer_indices = [i for i in self.layer_indices if first_layer <= i < end_layer]
        return view

    # --- sessions -------------------------------------------------------------------------
    def open_session(self, session_id: str, max_length: int) -> None:
        """Allocate a zeroed K/V cache of ``max_length`` positions for every layer of the range."""
        limit = self.config.max_position_embeddings
        if isinstance(max_length, bool) or not isinstance(max_length, int) or not 1 <= max_length <= limit:
            raise SegmentInputError(f"max_length: {max_length!r} must be an integer in [1, {limit}] (max_position_embeddings)")
        kv_shape = (self.config.num_key_value_heads, max_length, self.config.head_dim)
        with self._lock:
            if session_id in self._sessions:
                raise SessionError(f"session {session_id!r} is already open on {self.model_id} layers "
                                   f"[{self.first_layer}, {self.end_layer})")
            caches = {}
            for index in range(self.first_layer, self.end_layer):
                caches[index] = (torch.zeros(kv_shape, dtype=self.dtype, device=self.device),
                                 torch.zeros(kv_shape, dtype=self.dtype, device=self.device))
            self._sessions[session_id] = _Session(caches=caches, max_length=max_length)

    def close_session(self, session_id: str) -> None:
        """Free a session's cache; an unknown id raises ``SessionError``."""
        with self._lock:
            if self._sessions.pop(session_id, None) is None:
                raise SessionError(self._unknown(session_id))

    def session_count(self) -> int:
        return len(self._sessions)

    def session_length(self, session_id: str) -> int:
        """Number of positions already cached for the session."""
        with self._lock:
            return self._get(session_id).length

    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V cached per token across this segment's layers."""
        per_layer = 2 * self.config.num_key_value_heads * self.config.head_dim * self.dtype.itemsize
        return per_layer * (self.end_layer - self.first_layer)

    # --- compute --------------------------------------------------------------------------
    def step(self, session_id: str, inputs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Run ``T`` new tokens of a session (prefill when T > 1, decode when T == 1).

        Returns the residual stream ``[T, hidden]`` in ``self.dtype``, or fp32 logits
        ``[T, vocab]`` on the last segment. A start before the cached length rolls the session back
        (rule K1): rows from ``positions[0]`` on are overwritten, later ones dropped.
        """
        with self._lock:
            session = self._get(session_id)
            pos = self._check_positions(positions, start=None)
            first, t = int(pos[0]), pos.shape[0]
            if not step_follows(session.last_first, session.length - session.last_first, first):
                raise SegmentInputError(
                    f"positions: must start at {session.length} (tokens already in the session) or roll back to a "
                    f"position after the previous step's start {session.last_first} (rule K1), got {first}")
            if first + t > session.max_length:
                raise SegmentInputError(
                    f"positions: {first}..{first + t - 1} go beyond the max_length "
                    f"{session.max_length} of session {session_id!r}")
            x = self._check_inputs(inputs, t)
            with torch.no_grad():
                out = self.module.run(x, pos, self.inv_freq, self.layer_indices, session.caches, first)
            session.length, session.last_first = first + t, first
            return out

    def forward_full(self, inputs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Stateless forward of a whole sequence (no cache); same shapes and dtypes as ``step``."""
        pos = self._check_positions(positions, start=None)
        x = self._check_inputs(inputs, pos.shape[0])
        with torch.no_grad():
            return self.module.run(x, pos, self.inv_freq, self.layer_indices, None, int(pos[0]))

    # --- validation -----------------------------------------------------------------------
    def _get(self, session_id: str) -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionError(self._unknown(session_id))
        return session

    def _unknown(self, session_id: str) -> str:
        return (f"unknown session {session_id!r} on {self.model_id} layers [{self.first_layer}, {self.end_layer}) "
                f"({len(self._sessions)} open)")

    def _check_positions(self, positions: torch.Tensor, start: int | None) -> torch.Tensor:
        """Positions must be a 1-D integer tensor of consecutive values starting at ``start``
        (any start >= 0 when None) and below ``max_position_embeddings``."""
        if not isinstance(positions, torch.Tensor) or positions.dtype not in (torch.int64, torch.int32):
            raise SegmentInputError(f"positions: expected an int64 tensor, got {_describe(positions)}")
        if positions.dim() != 1 or positions.shape[0] == 0:
            raise SegmentInputError(f"positions: expected shape [T] with T >= 1, got {list(positions.shape)}")
        pos = positions.to(device="cpu", dtype=torch.int64)
        first = int(pos[0])
        expected_first = first if start is None else start
        if first != expected_first or first < 0:
            raise SegmentInputError(f"positions: must start at {expected_first} (tokens already in the session), got {first}")
        expected = torch.arange(first, first + pos.shape[0], dtype=torch.int64)
        if not torch.equal(pos, expected):
            raise SegmentInputError(f"positions: must be consecutive from {first}, got {pos.tolist()[:16]}")
        last = first + pos.shape[0] - 1
        if last >= self.config.max_position_embeddings:
            raise SegmentInputError(
                f"positions: {last} is beyond max_position_embeddings {self.config.max_position_embeddings}")
        return pos.to(self.device)

    def _check_inputs(self, inputs: torch.Tensor, t: int) -> torch.Tensor:
        if not isinstance(inputs, torch.Tensor):
            raise SegmentInputError(f"inputs: expected a tensor, got {type(inputs).__name__}")
        if self.is_first:
            if inputs.dtype not in (torch.int64, torch.int32):
                raise SegmentInputError(f"inputs: the first segment takes int64 token ids, got {_describe(inputs)}")
            if inputs.dim() != 1 or inputs.shape[0] != t:
                raise SegmentInputError(f"inputs: expected token ids of shape [{t}], got {list(inputs.shape)}")
            low, high = int(inputs.min()), int(inputs.max())
            if low < 0 or high >= self.config.vocab_size:
                raise SegmentInputError(f"inputs: token ids must be in [0, {self.config.vocab_size}), got range [{low}, {high}]")
            return inputs.to(device=self.device, dtype=torch.int64)
        hidden = self.config.hidden_size
        if inputs.dtype != self.dtype:
            raise SegmentInputError(f"inputs: expected hidden states in {self.dtype}, got {_describe(inputs)}")
        if inputs.dim() != 2 or inputs.shape[0] != t or inputs.shape[1] != hidden:
            raise SegmentInputError(f"inputs: expected hidden states of shape [{t}, {hidden}], got {list(inputs.shape)}")
        return inputs.to(self.device)


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {list(value.shape)}"
    return type(value).__name__
