"""Commitment chaining (rules H1-H3): the first failing link, substitution caught at exactly its link.

Model: boundary tensors live in an uninterpreted sort ``Tensor``; the digest is an uninterpreted
``H: Tensor -> Digest`` made injective by an inverse, ``ForAll x. Hinv(H(x)) == x`` (the collision
resistance assumption of SHA-256 stated as exact injectivity). Rules H1-H2 of a link (signature
valid, signer assigned, request, step, range) are one abstract Bool per link, ``fields_ok`` (the
signature check modelled as an arbitrary predicate: nothing about Ed25519 is proved).

PROVED (Z3, bounded):
- ``chain_first_failure``: the spec's ``first_failing_link`` (which ``check_chain`` calls on what it
  found per segment), run on symbolic presence flags, symbolic ``fields_ok`` flags and symbolic
  digests, returns the first index whose link is absent, fails H1-H2 or fails H3, for every n <= 16;
  and the spec's ``commitment_position`` (how ``check_chain`` finds segment k's commitment), run on
  symbolic segment indices, returns the first position claiming k, or -1, for up to 16 commitments.
- ``chain_substitution``: with an injective digest, substituting the tensor consumed at link j makes
  ``first_broken_link`` (``first_failing_link`` with every link present and passing H1-H2) report
  exactly j, for every n <= 16 and symbolic j.
- ``chain_unmodified``: an unmodified chain passes every link (verdict n), n <= 16.

TESTED (concrete): ``check_chain_concrete`` runs the real ``check_chain`` (Ed25519 signatures
included) on signed chains for every n <= 8: honest chains valid; a substitution, a wrong signer, a
bad signature and a dropped commitment at every link j give that verdict at exactly j, blamed on
segment j's provider; extra commitments are blamed on their valid cohort signer or on nobody.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from typing import Any, Iterator

import z3
from nacl.signing import SigningKey

from verisplit.proofs_z3.core import Evidence, Kind, Obligation, assume, concrete, register, valid
from verisplit.spec.cohort import Assignment, Cohort
from verisplit.spec.commitment import (BAD_SIGNATURE, EXTRA_COMMITMENT, INPUT_MISMATCH, MISSING_LINK,
                                       PROTOCOL_VERSION, WRONG_SIGNER, BoundaryCommitment, StepContext, check_chain,
                                       commitment_position, first_broken_link, first_failing_link, link_rule,
                                       sign_commitment)

MAX_LINKS = 16
MAX_CONCRETE_LINKS = 8
LINK_RULE = "verisplit.spec.commitment.link_rule"
CHECK_CHAIN = "verisplit.spec.commitment.check_chain"
FIRST_BROKEN = "verisplit.spec.commitment.first_broken_link"
FIRST_FAILING = "verisplit.spec.commitment.first_failing_link"
POSITION = "verisplit.spec.commitment.commitment_position"

INJECTIVE_DIGEST = assume(
    "digest_injective",
    "SHA-256 is collision-free, modelled as an injective digest H with an inverse: ForAll x. Hinv(H(x)) == x")
UNFORGEABLE = assume(
    "signatures_unforgeable",
    "Ed25519 is unforgeable: a commitment that verifies under the assigned key was signed by that provider "
    "(the signature check is modelled as an arbitrary per-link Bool, fields_ok; nothing about Ed25519 is proved)")

Tensor = z3.DeclareSort("Tensor")
Digest = z3.DeclareSort("Digest")
H = z3.Function("H", Tensor, Digest)
Hinv = z3.Function("Hinv", Digest, Tensor)
_x = z3.Const("x", Tensor)
INJECTIVE = z3.ForAll([_x], Hinv(H(_x)) == _x)


def _chain(n: int) -> tuple[list[Any], Any]:
    """Tensors t_0..t_n (t_k is segment k's input, t_{k+1} its output) and a substitute u."""
    return [z3.Const(f"t{k}", Tensor) for k in range(n + 1)], z3.Const("u", Tensor)


def _substituted(n: int, j: Any) -> tuple[list[Any], list[Any], list[Any], Any]:
    tensors, u = _chain(n)
    inputs = [z3.If(j == k, H(u), H(tensors[k])) for k in range(n)]
    outputs = [H(tensors[k + 1]) for k in range(n)]
    differs = [z3.Implies(j == k, u != tensors[k]) for k in range(n)]
    return tensors, inputs, outputs, z3.And(0 <= j, j < n, *differs)


# ---- the first failing link --------------------------------------------------------------------

def _links(n: int) -> tuple[Any, list[Any], list[Any], list[Any], list[Any]]:
    first = z3.Const("first", Digest)
    present = [z3.Bool(f"present{k}") for k in range(n)]
    fields = [z3.Bool(f"fields_ok{k}") for k in range(n)]
    inputs = [z3.Const(f"in{k}", Digest) for k in range(n)]
    outputs = [z3.Const(f"out{k}", Digest) for k in range(n)]
    return first, present, fields, inputs, outputs


def good_links(first: Any, present: list[Any], fields: list[Any], inputs: list[Any], outputs: list[Any]) -> list[Any]:
    """The independent statement of each link's rules: present, H1-H2 flag, and H3 against the previous
    link's output digest (``first`` for link 0)."""
    expected = [first] + outputs[:-1]
    return [z3.And(present[k], fields[k], inputs[k] == expected[k]) for k in range(len(present))]


def is_first_failure(result: Any, good: list[Any]) -> Any:
    """``result`` is in [0, n], every link before it is good, and link ``result`` is not (if < n)."""
    n = len(good)
    clauses = [0 <= result, result <= n]
    for k in range(n):
        clauses.append(z3.Implies(k < result, good[k]))
        clauses.append(z3.Implies(result == k, z3.Not(good[k])))
    return z3.And(*clauses)


def is_first_position(result: Any, indices: list[Any], segment: Any) -> Any:
    """``result`` is -1 iff no index equals ``segment``; else indices[result] == segment, none before."""
    clauses = [z3.Implies(result == -1, z3.And(*[i != segment for i in indices]) if indices else z3.BoolVal(True)),
               -1 <= result, result < len(indices)]
    for p in range(len(indices)):
        clauses.append(z3.Implies(result == p, z3.And(indices[p] == segment, *[indices[q] != segment for q in range(p)])))
    return z3.And(*clauses)


@register("chain_first_failure", spec_functions=(FIRST_FAILING, POSITION),
          bound="every n<=16 segments; commitment_position over <=16 commitments; symbolic flags and digests",
          assumes=(UNFORGEABLE,))
def chain_first_failure() -> Iterator[Obligation]:
    """first_failing_link returns the first link that is absent, fails H1-H2 or fails H3 (n if none);
    commitment_position returns the first commitment claiming the segment (-1 if none)."""
    for n in range(1, MAX_LINKS + 1):
        first, present, fields, inputs, outputs = _links(n)
        result = first_failing_link(first, present, fields, inputs, outputs)
        yield valid(f"first_failing_link is the first bad link, n={n}",
                    is_first_failure(result, good_links(first, present, fields, inputs, outputs)), [], "bounded")
    segment = z3.Int("segment")
    for m in range(0, MAX_LINKS + 1):
        indices = [z3.Int(f"claimed{p}") for p in range(m)]
        yield valid(f"commitment_position is the first claim, {m} commitments",
                    is_first_position(commitment_position(indices, segment), indices, segment), [segment >= 0], "bounded")


@register("chain_first_failure_mutant_last_failure", kind=Kind.MUTANT, property="chain_first_failure",
          spec_functions=(FIRST_FAILING,), bound="n=3")
def chain_first_failure_mutant() -> Iterator[Obligation]:
    """Mutant claim: the verdict is the *last* bad link (refuted when two links are bad)."""
    first, present, fields, inputs, outputs = _links(3)
    result = first_failing_link(first, present, fields, inputs, outputs)
    good = good_links(first, present, fields, inputs, outputs)
    last_bad = z3.And(*[z3.Implies(z3.And(k < result, result < 3), good[k]) for k in range(3)],
                      *[z3.Implies(z3.And(result < k, k < 3), good[k]) for k in range(3)])
    yield valid("mutant: every link after the verdict is good, n=3", last_bad, [])


@register("chain_substitution", spec_functions=(LINK_RULE, FIRST_BROKEN, FIRST_FAILING),
          bound="every chain length n<=16, symbolic substitution point j<n", assumes=(INJECTIVE_DIGEST,))
def chain_substitution() -> Iterator[Obligation]:
    """Substituting the tensor at link j makes link_rule fail at link j and at no earlier link."""
    j = z3.Int("j")
    for n in range(1, MAX_LINKS + 1):
        tensors, inputs, outputs, hyp = _substituted(n, j)
        verdict = first_broken_link(H(tensors[0]), inputs, outputs)
        yield valid(f"first failing link == j, n={n}", verdict == j, [INJECTIVE, hyp], "bounded")


@register("chain_substitution_mutant_one_early", kind=Kind.MUTANT, property="chain_substitution",
          spec_functions=(LINK_RULE,), bound="n=3")
def chain_substitution_mutant_early() -> Iterator[Obligation]:
    """Mutant claim: the substitution is detected one link early (at j-1)."""
    j = z3.Int("j")
    tensors, inputs, outputs, hyp = _substituted(3, j)
    verdict = first_broken_link(H(tensors[0]), inputs, outputs)
    yield valid("mutant first failing link == j-1, n=3", verdict == j - 1, [INJECTIVE, hyp])


@register("chain_substitution_mutant_no_injectivity", kind=Kind.MUTANT, property="chain_substitution",
          spec_functions=(LINK_RULE,), bound="n=3")
def chain_substitution_mutant_collision() -> Iterator[Obligation]:
    """Mutant claim: without the injectivity assumption a digest collision hides the substitution."""
    j = z3.Int("j")
    tensors, inputs, outputs, hyp = _substituted(3, j)
    verdict = first_broken_link(H(tensors[0]), inputs, outputs)
    yield valid("mutant without injectivity, n=3", verdict == j, [hyp])


@register("chain_unmodified", spec_functions=(LINK_RULE, FIRST_BROKEN, FIRST_FAILING), bound="every chain length n<=16",
          assumes=(INJECTIVE_DIGEST,))
def chain_unmodified() -> Iterator[Obligation]:
    """An unmodified chain passes link_rule at every link (verdict: no failing link)."""
    for n in range(1, MAX_LINKS + 1):
        tensors, _ = _chain(n)
        inputs = [H(tensors[k]) for k in range(n)]
        outputs = [H(tensors[k + 1]) for k in range(n)]
        verdict = first_broken_link(H(tensors[0]), inputs, outputs)
        yield valid(f"honest chain valid, n={n}", verdict == n, [INJECTIVE], "bounded")


@register("chain_unmodified_mutant_output_swapped", kind=Kind.MUTANT, property="chain_unmodified",
          spec_functions=(FIRST_BROKEN,), bound="n=2")
def chain_unmodified_mutant() -> Iterator[Obligation]:
    """Mutant claim: a chain whose link 0 commits to another output than link 1 consumed still passes."""
    tensors, u = _chain(2)
    inputs = [H(tensors[0]), H(tensors[1])]
    outputs = [H(u), H(tensors[2])]
    verdict = first_broken_link(H(tensors[0]), inputs, outputs)
    yield valid("mutant chain with a swapped output passes, n=2", verdict == 2, [INJECTIVE])


# ---- concrete: the real check_chain on signed chains ---------------------------------------------

def _digest(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


KEYS = [SigningKey(hashlib.sha256(f"chain-key-{k}".encode()).digest()) for k in range(MAX_CONCRETE_LINKS + 1)]
CONTEXT = StepContext("m", "req", step=0, first_position=0, num_positions=1)


def _commit(k: int, input_digest: bytes, key: SigningKey | None = None) -> BoundaryCommitment:
    unsigned = BoundaryCommitment(PROTOCOL_VERSION, "m", _digest("weights"), "req", 0, k, k, k + 1, 0, 1,
                                  input_digest, _digest(f"t{k + 1}"), b"")
    return sign_commitment(unsigned, key or KEYS[k])


def _expect(label: str, verdict: Any, wanted: tuple[Any, ...]) -> str:
    got = (verdict.valid, verdict.link, verdict.culprit, verdict.reason)
    return "" if got == wanted else f"{label}: {got} != expected {wanted}"


def _concrete_failures(n: int) -> Iterator[str]:
    cohort = Cohort("m", tuple(Assignment(f"p{k}", bytes(KEYS[k].verify_key), k, k + 1) for k in range(n)))
    honest = [_commit(k, _digest(f"t{k}")) for k in range(n)]
    first = _digest("t0")
    yield _expect(f"honest n={n}", check_chain(cohort, honest, first, CONTEXT), (True, None, None, None))
    yield _expect(f"honest reversed n={n}", check_chain(cohort, honest[::-1], first, CONTEXT), (True, None, None, None))
    outsider = KEYS[MAX_CONCRETE_LINKS]
    for j in range(n):
        cases = {
            "substituted": (honest[:j] + [_commit(j, _digest("substitute"))] + honest[j + 1:], INPUT_MISMATCH),
            "wrong signer": (honest[:j] + [_commit(j, _digest(f"t{j}"), outsider)] + honest[j + 1:], WRONG_SIGNER),
            "bad signature": (honest[:j] + [replace(honest[j], signature=bytes(64))] + honest[j + 1:], BAD_SIGNATURE),
            "dropped": (honest[:j] + honest[j + 1:], MISSING_LINK),
        }
        for name, (chain, reason) in cases.items():
            yield _expect(f"{name} at {j}, n={n}", check_chain(cohort, chain, first, CONTEXT), (False, j, f"p{j}", reason))
    member_extra = sign_commitment(replace(honest[-1], segment_index=n + 3), KEYS[n - 1])
    yield _expect(f"extra by member n={n}", check_chain(cohort, honest + [member_extra], first, CONTEXT),
                  (False, n, f"p{n - 1}", EXTRA_COMMITMENT))
    yield _expect(f"duplicate n={n}", check_chain(cohort, honest + [honest[0]], first, CONTEXT),
                  (False, n, "p0", EXTRA_COMMITMENT))
    outsider_extra = sign_commitment(replace(honest[-1], segment_index=n), outsider)
    yield _expect(f"extra by outsider n={n}", check_chain(cohort, honest + [outsider_extra], first, CONTEXT),
                  (False, n, None, EXTRA_COMMITMENT))
    unsigned_extra = replace(honest[0], signature=b"")
    yield _expect(f"unsigned extra n={n}", check_chain(cohort, honest + [unsigned_extra], first, CONTEXT),
                  (False, n, None, EXTRA_COMMITMENT))


@register("check_chain_concrete", spec_functions=(CHECK_CHAIN,), evidence=Evidence.TESTED,
          bound="exhaustive over n<=8 links x every link j x {substituted, wrong signer, bad signature, dropped}; extras")
def check_chain_concrete() -> Iterator[Obligation]:
    """The real check_chain on Ed25519-signed chains: honest valid; each fault at link j is reported at
    exactly j with segment j's provider as culprit; extras blamed on their valid cohort signer or nobody."""
    start = time.perf_counter()
    for n in range(1, MAX_CONCRETE_LINKS + 1):
        for failure in _concrete_failures(n):
            if failure:
                yield concrete("check_chain concrete runs", False, time.perf_counter() - start, failure)
                return
    yield concrete(f"check_chain concrete runs (n<={MAX_CONCRETE_LINKS}, every j, every fault)", True,
                   time.perf_counter() - start)
