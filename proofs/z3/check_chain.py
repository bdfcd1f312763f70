"""Commitment chaining (rule H3): substitution is caught at exactly the substituted link.

Model: boundary tensors live in an uninterpreted sort ``Tensor``; the digest is an uninterpreted
``H: Tensor -> Digest`` made injective by an inverse, ``ForAll x. Hinv(H(x)) == x`` (the collision
resistance assumption of SHA-256 stated as exact injectivity). The per-link comparison is the spec's
own ``link_rule``, and the chain verdict is the spec's own ``first_broken_link`` (the H3 part of
``check_chain``) run on Z3 terms. ``check_chain`` also verifies Ed25519 signatures on concrete
bytes, so a concrete companion runs the real ``check_chain`` on signed chains for every n <= 16 and
every substitution point (verdict: link j, input_mismatch).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Callable, Iterator

import z3
from nacl.signing import SigningKey

from verisplit.proofs_z3.core import Kind, Obligation, concrete, register, valid
from verisplit.spec.arith import ite, negate
from verisplit.spec.cohort import Assignment, Cohort
from verisplit.spec.commitment import (INPUT_MISMATCH, PROTOCOL_VERSION, BoundaryCommitment, StepContext,
                                       check_chain, first_broken_link, link_rule, sign_commitment)

MAX_LINKS = 16
LINK_RULE = "verisplit.spec.commitment.link_rule"
CHECK_CHAIN = "verisplit.spec.commitment.check_chain"
FIRST_BROKEN = "verisplit.spec.commitment.first_broken_link"
ASSUMPTIONS = ("digest injective (collision resistance as exact injectivity: Hinv(H(x)) == x)",
               "signatures unforgeable (every link is signed by its assigned provider)")

Tensor = z3.DeclareSort("Tensor")
Digest = z3.DeclareSort("Digest")
H = z3.Function("H", Tensor, Digest)
Hinv = z3.Function("Hinv", Digest, Tensor)
_x = z3.Const("x", Tensor)
INJECTIVE = z3.ForAll([_x], Hinv(H(_x)) == _x)


def stale_first_failing_link(first_input: Any, inputs: list[Any], outputs: list[Any],
                             rule: Callable[[Any, Any], Any] = link_rule, advance: bool = False) -> Any:
    """MUTANT ONLY: a deliberately wrong variant of ``first_broken_link`` whose expected digest can be
    left stale (``advance=False``); the proofs themselves use the spec's ``first_broken_link``."""
    expected = first_input
    oks: list[Any] = []
    for this_input, this_output in zip(inputs, outputs):
        oks.append(rule(expected, this_input))
        if advance:
            expected = this_output
    verdict: Any = z3.IntVal(len(inputs))
    for index in reversed(range(len(oks))):
        verdict = ite(negate(oks[index]), z3.IntVal(index), verdict)
    return verdict


def _chain(n: int) -> tuple[list[Any], Any]:
    """Tensors t_0..t_n (t_k is segment k's input, t_{k+1} its output) and a substitute u."""
    return [z3.Const(f"t{k}", Tensor) for k in range(n + 1)], z3.Const("u", Tensor)


def _substituted(n: int, j: Any) -> tuple[list[Any], list[Any], list[Any], Any]:
    tensors, u = _chain(n)
    inputs = [ite(j == k, H(u), H(tensors[k])) for k in range(n)]
    outputs = [H(tensors[k + 1]) for k in range(n)]
    differs = [z3.Implies(j == k, u != tensors[k]) for k in range(n)]
    return tensors, inputs, outputs, z3.And(0 <= j, j < n, *differs)


@register("chain_substitution", spec_functions=(LINK_RULE, FIRST_BROKEN, CHECK_CHAIN),
          bound="every chain length n<=16, symbolic substitution point j<n", assumptions=ASSUMPTIONS)
def chain_substitution() -> Iterator[Obligation]:
    """Substituting the tensor at link j makes link_rule fail at link j and at no earlier link."""
    j = z3.Int("j")
    for n in range(1, MAX_LINKS + 1):
        tensors, inputs, outputs, hyp = _substituted(n, j)
        verdict = first_broken_link(H(tensors[0]), inputs, outputs)
        yield valid(f"first failing link == j, n={n}", verdict == j, [INJECTIVE, hyp], "bounded")
    yield _concrete_chain_runs()


@register("chain_substitution_mutant_one_early", kind=Kind.MUTANT, property="chain_substitution",
          spec_functions=(LINK_RULE,), bound="n=3")
def chain_substitution_mutant_early() -> Iterator[Obligation]:
    """Mutant: the substitution is detected one link early (at j-1)."""
    j = z3.Int("j")
    tensors, inputs, outputs, hyp = _substituted(3, j)
    verdict = first_broken_link(H(tensors[0]), inputs, outputs)
    yield valid("mutant first failing link == j-1, n=3", verdict == j - 1, [INJECTIVE, hyp])


@register("chain_substitution_mutant_no_injectivity", kind=Kind.MUTANT, property="chain_substitution",
          spec_functions=(LINK_RULE,), bound="n=3")
def chain_substitution_mutant_collision() -> Iterator[Obligation]:
    """Mutant: drop the injectivity assumption; a digest collision hides the substitution."""
    j = z3.Int("j")
    tensors, inputs, outputs, hyp = _substituted(3, j)
    verdict = first_broken_link(H(tensors[0]), inputs, outputs)
    yield valid("mutant without injectivity, n=3", verdict == j, [hyp])


@register("chain_unmodified", spec_functions=(LINK_RULE, FIRST_BROKEN, CHECK_CHAIN), bound="every chain length n<=16",
          assumptions=ASSUMPTIONS)
def chain_unmodified() -> Iterator[Obligation]:
    """An unmodified chain passes link_rule at every link (verdict: no failing link)."""
    for n in range(1, MAX_LINKS + 1):
        tensors, _ = _chain(n)
        inputs = [H(tensors[k]) for k in range(n)]
        outputs = [H(tensors[k + 1]) for k in range(n)]
        verdict = first_broken_link(H(tensors[0]), inputs, outputs)
        yield valid(f"honest chain valid, n={n}", verdict == n, [INJECTIVE], "bounded")


@register("chain_unmodified_mutant_stale_expected", kind=Kind.MUTANT, property="chain_unmodified",
          spec_functions=(LINK_RULE,), bound="n=2")
def chain_unmodified_mutant() -> Iterator[Obligation]:
    """Mutant: a checker that never advances the expected digest rejects honest chains."""
    tensors, _ = _chain(2)
    inputs = [H(tensors[k]) for k in range(2)]
    outputs = [H(tensors[k + 1]) for k in range(2)]
    verdict = stale_first_failing_link(H(tensors[0]), inputs, outputs, advance=False)
    yield valid("mutant stale expected digest, n=2", verdict == 2, [INJECTIVE])


# ---- concrete companion: the real check_chain on signed chains ----------------------------------

def _digest(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def _concrete_chain_runs() -> Obligation:
    """Run ``check_chain`` on Ed25519-signed chains, n = 1..16, unmodified and substituted at each j."""
    start = time.perf_counter()
    context = StepContext("m", "req", step=0, first_position=0, num_positions=1)
    keys = [SigningKey(hashlib.sha256(f"chain-key-{k}".encode()).digest()) for k in range(MAX_LINKS)]
    for n in range(1, MAX_LINKS + 1):
        assignments = tuple(Assignment(f"p{k}", bytes(keys[k].verify_key), k, k + 1) for k in range(n))
        cohort = Cohort("m", assignments)

        def commit(k: int, input_digest: bytes) -> BoundaryCommitment:
            unsigned = BoundaryCommitment(PROTOCOL_VERSION, "m", _digest("weights"), "req", 0, k, k, k + 1, 0, 1,
                                          input_digest, _digest(f"t{k + 1}"), b"")
            return sign_commitment(unsigned, keys[k])

        honest = [commit(k, _digest(f"t{k}")) for k in range(n)]
        verdict = check_chain(cohort, honest, _digest("t0"), context)
        if not verdict.valid:
            return concrete("check_chain concrete runs", False, time.perf_counter() - start,
                            f"honest chain n={n} rejected: {verdict}")
        for j in range(n):
            chain = list(honest)
            chain[j] = commit(j, _digest("substitute"))
            verdict = check_chain(cohort, chain, _digest("t0"), context)
            if verdict.valid or verdict.link != j or verdict.reason != INPUT_MISMATCH:
                return concrete("check_chain concrete runs", False, time.perf_counter() - start,
                                f"n={n} substitution at {j}: {verdict}")
    return concrete("check_chain concrete runs (n<=16, every j)", True, time.perf_counter() - start)
