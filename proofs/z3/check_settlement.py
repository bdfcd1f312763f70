"""Settlement properties S3-S5, proved on ``verisplit.spec.settlement.settle_parts`` itself.

Method (kept linear, following docs/proofs.md):
- bounded: for every N in 1..16 the spec's ``settle_parts`` runs on ``z3.Int`` fees/works and
  ``z3.Bool`` failed flags; each slice term ``(fee*w_i) div W`` it builds is replaced by a fresh
  ``q_i`` (an abstraction: anything proved about arbitrary q_i holds for the real ones). Products
  are named (``P_i = fee*w_i``, ``M_i = W*q_i``, ``FW = fee*W``, ``WR = W*residual``) and connected by
  linear facts, each an instance of a lemma proved separately below on the real products;
- all N: induction over the loop's accumulators (base, step, conclusion), the step running the
  spec's own ``provider_slice`` / ``ite`` on symbolic values.
"""

from __future__ import annotations

from typing import Any, Iterator

import z3

from verisplit.proofs_z3.core import Kind, Obligation, register, valid
from verisplit.spec.arith import ite
from verisplit.spec.settlement import provider_slice, settle_parts

MAX_N = 16
SETTLE = "verisplit.spec.settlement.settle_parts"
SLICE = "verisplit.spec.settlement.provider_slice"
BOUND = "N<=16 unrolled; all N by induction"


def _sum(terms: list[Any]) -> Any:
    total: Any = 0
    for t in terms:
        total = total + t
    return total


class Instance:
    """Symbolic inputs for N providers and the spec's outputs with slices abstracted to ``q_i``."""

    def __init__(self, n: int, tag: str = "") -> None:
        self.n = n
        self.fee = z3.Int(f"fee{tag}")
        self.works = [z3.Int(f"w{i}{tag}") for i in range(n)]
        self.flags = [z3.Bool(f"failed{i}{tag}") for i in range(n)]
        self.q = [z3.Int(f"q{i}{tag}") for i in range(n)]
        self.r = [z3.Int(f"r{i}{tag}") for i in range(n)]
        total: Any = 0
        for w in self.works:  # the same term settle_parts builds for W
            total = total + w
        self.total = total
        self.slice_terms = [provider_slice(self.fee, w, total) for w in self.works]

    def abstract(self, term: Any) -> Any:
        """Replace each spec slice term ``(fee*w_i) div W`` by ``q_i``."""
        if not z3.is_expr(term):
            return term
        return z3.substitute(term, *zip(self.slice_terms, self.q))

    def run(self, flags: list[Any] | None = None, abstract: bool = True) -> tuple[list[Any], Any, Any]:
        """The spec's outputs; with ``abstract`` the slice terms become ``q_i`` (proofs), without it
        they stay real ``div`` terms (mutants, so a counterexample is a real settlement)."""
        payouts, residual, refund = settle_parts(self.fee, self.works, self.flags if flags is None else flags)
        if not abstract:
            return payouts, residual, refund
        return [self.abstract(p) for p in payouts], self.abstract(residual), self.abstract(refund)

    def small(self) -> list[Any]:
        """Small concrete ranges so mutant counterexamples are found quickly on the real terms."""
        return [self.fee <= 12] + [w <= 4 for w in self.works]

    def domain(self) -> list[Any]:
        """Input domain of ``settle``: fee >= 0, works >= 0, total work >= 1."""
        return [self.fee >= 0, self.total >= 1] + [w >= 0 for w in self.works]


# ---- lemmas on real (nonlinear) products; the linear queries use instances of them --------------

def _lemma_obligations() -> Iterator[Obligation]:
    p, w, x, k, a, b, fee = z3.Ints("P W x K a b fee")
    yield valid("lemma div: W>=1 -> 0 <= P - W*(P div W) < W",
                z3.And(0 <= p - w * (p / w), p - w * (p / w) < w), [w >= 1])
    yield valid("lemma monotone: W>=1 -> (W*x>=0 -> x>=0) and (W*x < W*K -> x < K)",
                z3.And(z3.Implies(w * x >= 0, x >= 0), z3.Implies(w * x < w * k, x < k)), [w >= 1])
    yield valid("lemma distributive: fee*(a+b) == fee*a + fee*b and W*(a-b) == W*a - W*b",
                z3.And(fee * (a + b) == fee * a + fee * b, w * (a - b) == w * a - w * b), [])


def _named_residual_hyps(inst: Instance, residual: Any) -> tuple[list[Any], Any, Any]:
    """Linear facts about the named products for one bounded instance (see module docstring).

    The monotone-lemma instances are stated about ``fee - sum(q_i)`` (the term ``WR`` is ``W`` times,
    by distributivity), never about the ``residual`` the spec returned: that the spec's residual equals
    this term is left for Z3 to derive from the spec's own expression. (Stating them about ``residual``
    would assume the conclusion: a spec whose residual is off by one still "proved".) ``residual`` is
    accepted for interface stability and is unused."""
    del residual
    n = inst.n
    P = [z3.Int(f"P{i}") for i in range(n)]  # fee*w_i
    M = [z3.Int(f"M{i}") for i in range(n)]  # W*q_i
    FW, WR = z3.Ints("FW WR")  # fee*W, W*residual
    W = inst.total
    hyps = []
    for i in range(n):
        hyps += [P[i] == M[i] + inst.r[i], 0 <= inst.r[i], inst.r[i] < W]  # lemma div
    hyps.append(FW == _sum(P))  # lemma distributive, W = sum w_i
    hyps.append(WR == FW - _sum(M))  # lemma distributive, residual = fee - sum q_i
    intended = inst.fee - _sum(inst.q)  # WR == W * intended (lemma distributive)
    hyps += [z3.Implies(WR >= 0, intended >= 0), z3.Implies(WR < n * W, intended < n)]  # lemma monotone
    return hyps, WR, FW


# ---- fee conservation --------------------------------------------------------------------------

@register("fee_conservation", spec_functions=(SETTLE, SLICE), bound=BOUND,
          assumptions=("fee >= 0, works >= 0, total work >= 1 (settle rejects anything else)",))
def fee_conservation() -> Iterator[Obligation]:
    """sum(payouts) + residual + refund == fee for every fee and work vector, every failed set."""
    q0, f0 = z3.Int("q"), z3.Bool("failed")
    yield valid("lemma ite split: ite(f,0,q) + ite(f,q,0) == q (spec ite)", ite(f0, 0, q0) + ite(f0, q0, 0) == q0, [])
    for n in range(1, MAX_N + 1):
        inst = Instance(n)
        payouts, residual, refund = inst.run()
        # name the per-provider payout/refund terms; each pair is an instance of the ite-split lemma
        paid = [z3.Int(f"paid{i}") for i in range(n)]
        kept = [z3.Int(f"refunded{i}") for i in range(n)]
        names = [(ite(inst.flags[i], 0, inst.q[i]), paid[i]) for i in range(n)]
        names += [(ite(inst.flags[i], inst.q[i], 0), kept[i]) for i in range(n)]
        claim = z3.substitute(_sum(payouts) + residual + refund == inst.fee, *names)
        hyps = inst.domain() + [paid[i] + kept[i] == inst.q[i] for i in range(n)]
        yield valid(f"conservation N={n}", claim, hyps, "bounded")
    # all N: invariant Spay + Sref == Sq over the loop accumulators.
    fee, q, spay, sref, sq, w, W = z3.Ints("fee q Spay Sref Sq w W")
    failed = z3.Bool("failed")
    yield valid("induction base", z3.IntVal(0) + 0 == z3.IntVal(0), [])
    piece = provider_slice(fee, w, W)
    step_claim = (spay + ite(failed, 0, piece)) + (sref + ite(failed, piece, 0)) == sq + piece
    yield valid("induction step (spec loop body)", step_claim, [spay + sref == sq, W >= 1, fee >= 0, w >= 0])
    residual = fee - sq  # settle_parts: residual = fee - paid_slices
    yield valid("induction conclusion", spay + residual + sref == fee, [spay + sref == sq])


@register("fee_conservation_mutant_residual_ignores_refund", kind=Kind.MUTANT, property="fee_conservation",
          spec_functions=(SETTLE,), bound="N=2")
def fee_conservation_mutant() -> Iterator[Obligation]:
    """Mutant: the lead's residual computed as fee - sum(payouts) (refund forgotten) still 'conserves'."""
    inst = Instance(2)
    payouts, _, refund = inst.run(abstract=False)
    wrong_residual = inst.fee - _sum(payouts)
    yield valid("mutant conservation N=2", _sum(payouts) + wrong_residual + refund == inst.fee,
                inst.domain() + inst.small())


# ---- residual bound ----------------------------------------------------------------------------

@register("residual_bound", spec_functions=(SETTLE, SLICE), bound=BOUND,
          assumptions=("fee >= 0, works >= 0, total work >= 1",
                       "named products are instances of the div/monotone/distributive lemmas proved here"))
def residual_bound() -> Iterator[Obligation]:
    """The lead's residual lies in [0, N-1] for N providers."""
    yield from _lemma_obligations()
    for n in range(1, MAX_N + 1):
        inst = Instance(n)
        _, residual, _ = inst.run()
        hyps, _, _ = _named_residual_hyps(inst, residual)
        yield valid(f"residual in [0,N-1] N={n}", z3.And(residual >= 0, residual <= n - 1),
                    inst.domain() + hyps, "bounded")
    # all N: invariant SP == SM + Sr and 0 <= Sr <= KW - k (KW named k*W).
    k, W, sp, sm, sr, kw, p, m, r = z3.Ints("k W SP SM Sr KW P M R")
    inv = z3.And(sp == sm + sr, 0 <= sr, sr <= kw - k)
    yield valid("induction base", z3.substitute(inv, (sp, z3.IntVal(0)), (sm, z3.IntVal(0)), (sr, z3.IntVal(0)),
                                                (kw, z3.IntVal(0)), (k, z3.IntVal(0))), [])
    stepped = z3.substitute(inv, (sp, sp + p), (sm, sm + m), (sr, sr + r), (kw, kw + W), (k, k + 1))
    yield valid("induction step", stepped, [inv, W >= 1, k >= 0, p == m + r, 0 <= r, r < W])
    fee, sq, fw, wr, n = z3.Ints("fee Sq FW WR N")
    residual = fee - sq
    hyps = [inv, W >= 1, k == n, n >= 1, sp == fw, wr == fw - sm,
            z3.Implies(wr >= 0, residual >= 0), z3.Implies(wr < kw, residual < n)]  # kw = N*W: lemma monotone
    yield valid("induction conclusion", z3.And(residual >= 0, residual <= n - 1), hyps)


@register("residual_bound_mutant_strict", kind=Kind.MUTANT, property="residual_bound",
          spec_functions=(SETTLE,), bound="N=3")
def residual_bound_mutant() -> Iterator[Obligation]:
    """Mutant: residual < N-1 (strict) — false, e.g. fee=2 split over three equal works."""
    inst = Instance(3)
    _, residual, _ = inst.run(abstract=False)
    yield valid("mutant residual < N-1, N=3", residual < 3 - 1, inst.domain() + inst.small())


# ---- forfeit isolation -------------------------------------------------------------------------

@register("forfeit_isolation", spec_functions=(SETTLE, SLICE), bound=BOUND,
          assumptions=("fee >= 0, works >= 0, total work >= 1",))
def forfeit_isolation() -> Iterator[Obligation]:
    """Any failed set: a failed provider gets exactly 0; every other provider's payout is unchanged
    (equal to its payout when nobody failed)."""
    for n in range(1, MAX_N + 1):
        inst = Instance(n)
        marked, _, _ = inst.run()
        honest, _, _ = inst.run([False] * n)
        claim = z3.And(*[z3.If(inst.flags[i], marked[i] == 0, marked[i] == honest[i]) for i in range(n)])
        yield valid(f"isolation N={n}", claim, inst.domain(), "bounded")
    # all N: payout i is the loop body ite(failed_i, 0, provider_slice(fee, w_i, W)); the slice reads
    # no flag, so one body obligation covers every index of every N.
    fee, w, W = z3.Ints("fee w W")
    failed = z3.Bool("failed")
    piece = provider_slice(fee, w, W)
    body = ite(failed, 0, piece)
    yield valid("loop body: failed -> 0, else unchanged slice",
                z3.If(failed, body == 0, body == ite(False, 0, piece)), [W >= 1, fee >= 0, w >= 0])


@register("forfeit_isolation_mutant_renormalise", kind=Kind.MUTANT, property="forfeit_isolation",
          spec_functions=(SETTLE,), bound="N=2")
def forfeit_isolation_mutant() -> Iterator[Obligation]:
    """Mutant: re-split the fee over survivors only (W over non-failed works) — changes others' pay."""
    fee, w0, w1 = z3.Ints("fee w0 w1")
    f0 = z3.Bool("failed0")
    survivors = ite(f0, 0, w0) + w1
    honest1 = provider_slice(fee, w1, w0 + w1)
    mutant1 = provider_slice(fee, w1, survivors)
    hyps = [fee >= 0, w0 >= 0, w1 >= 1, fee <= 10, w0 <= 5, w1 <= 5]
    yield valid("mutant isolation N=2", mutant1 == honest1, hyps)


@register("forfeit_isolation_mutant_pays_failed", kind=Kind.MUTANT, property="forfeit_isolation",
          spec_functions=(SETTLE,), bound="N=2")
def forfeit_isolation_mutant_pays_failed() -> Iterator[Obligation]:
    """Mutant: payout to a failed shard (the failed flag ignored) — a failed provider gets > 0."""
    inst = Instance(2)
    mutant_payouts, _, _ = inst.run([False, False], abstract=False)  # the mutant ignores the flags
    yield valid("mutant pays failed N=2", z3.Implies(inst.flags[0], mutant_payouts[0] == 0),
                inst.domain() + inst.small())
