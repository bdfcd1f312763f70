"""Shared builders for the spec tests: deterministic keys, offers and signed chains."""

from __future__ import annotations

from dataclasses import replace

from nacl.signing import SigningKey

from verisplit.spec.cohort import Cohort
from verisplit.spec.commitment import PROTOCOL_VERSION, BoundaryCommitment, StepContext, sign_commitment
from verisplit.spec.encoding import tensor_digest


def key(index: int) -> SigningKey:
    """A deterministic Ed25519 key for provider ``index``."""
    return SigningKey(bytes([index + 1]) * 32)


def digest_of(value: int) -> bytes:
    """Digest of a tiny float32 tensor holding ``value`` (a stand-in boundary tensor)."""
    return tensor_digest("float32", (1,), int(value).to_bytes(4, "little"))


def signed_chain(cohort: Cohort, context: StepContext, tensors: list[int], keys: dict[str, SigningKey]) -> list[BoundaryCommitment]:
    """An honest chain: link k consumes tensors[k] and produces tensors[k+1]."""
    chain = []
    for index, a in enumerate(cohort.assignments):
        unsigned = BoundaryCommitment(
            PROTOCOL_VERSION, context.model_id, bytes(32), context.request_id, context.step, index,
            a.first_layer, a.end_layer, context.first_position, context.num_positions,
            digest_of(tensors[index]), digest_of(tensors[index + 1]), a.public_key,
            dtype=context.dtype, audit_seed_commitment=context.audit_seed_commitment)
        chain.append(sign_commitment(unsigned, keys[a.provider_id]))
    return chain


def resign(c: BoundaryCommitment, signing_key: SigningKey, **changes: object) -> BoundaryCommitment:
    """``c`` with ``changes`` applied and re-signed by ``signing_key``."""
    return sign_commitment(replace(c, **changes), signing_key)  # type: ignore[arg-type]
