"""Settlement properties S1-S5 and the quote property, proved on ``verisplit.spec.settlement`` itself.

The weights given to ``settle_parts`` are arbitrary non-negative integers with a positive total, so
every property below holds for the value weights ``price * work`` that ``settle`` passes (rule S0).

Method (docs/proofs.md, "How a check is proved"):
- bounded: for every N in 1..16 the spec's ``settle_parts`` runs on ``z3.Int`` fee/weights and
  ``z3.Bool`` failed flags, and the claim is stated about the terms it returns;
- lemmas, not assumptions: every nonlinear fact a query needs (the floor-division bounds of the spec's
  own ``provider_slice`` term, distributivity, commutativity, monotonicity, the quote identity of
  ``provider_value``/``quoted_share``) is a ``Lemma``: a formula over its own variables that Z3 proves
  (yielded as an obligation of every check that uses it), then instantiated by substituting the spec's
  actual terms for those variables. An instance of a proved lemma is valid, so adding it to the
  hypotheses assumes nothing;
- linear queries: ``linearize`` then replaces every nonlinear subterm (a product of two non-numeral
  terms, a division by a non-numeral) by one fresh variable per distinct term, consistently in
  hypotheses and claim. That is a generalisation (a proof for arbitrary values of those variables is a
  proof for the real terms), so it can lose proofs but never invent one; a query whose result is still
  nonlinear raises instead of being checked;
- all N: induction over the loop's accumulators (base, step, conclusion), the step running the spec's
  own ``provider_slice`` / ``ite`` on symbolic values, with the same lemma instances.

Mutants run a property's claim on a deliberately broken implementation on the *real* terms (small
ranges, no abstraction), so their counterexample is a real settlement.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import z3

from verisplit.proofs_z3.core import Kind, Obligation, register, valid
from verisplit.spec.arith import fdiv, ite
from verisplit.spec.settlement import provider_slice, provider_value, quoted_share, settle_parts

MAX_N = 16
PARTS = "verisplit.spec.settlement.settle_parts"
SLICE = "verisplit.spec.settlement.provider_slice"
VALUE = "verisplit.spec.settlement.provider_value"
SHARE = "verisplit.spec.settlement.quoted_share"
BOUND = "N<=16 unrolled; all N by induction"
WEIGHTS = ("weights: arbitrary non-negative integers with total >= 1 (settle passes values price*work; "
           "total value 0 is rule S0's full refund, outside settle_parts)")
DOMAIN = "fee >= 0"


# ---- proof tools: lemmas, their instances, linear abstraction -----------------------------------

class Lemma:
    """A fact over its own free variables: ``hyps -> claim``. ``proof()`` asks Z3 to prove it;
    ``at(*terms)`` is the instance with ``terms`` substituted for the variables (valid once proved)."""

    def __init__(self, name: str, variables: Sequence[Any], claim: Any, hyps: Sequence[Any] = ()) -> None:
        self.name = name
        self.variables = tuple(variables)
        self.claim = claim
        self.hyps = tuple(hyps)

    def proof(self) -> Obligation:
        return valid(f"lemma {self.name}", self.claim, self.hyps)

    def at(self, *terms: Any) -> Any:
        if len(terms) != len(self.variables):
            raise ValueError(f"lemma {self.name}: {len(self.variables)} variables, {len(terms)} terms")
        body = z3.Implies(z3.And(*self.hyps), self.claim) if self.hyps else self.claim
        pairs = [(v, t if z3.is_expr(t) else z3.BoolVal(t) if isinstance(t, bool) else z3.IntVal(t))
                 for v, t in zip(self.variables, terms)]
        return z3.substitute(body, *pairs)


def lemmas() -> dict[str, Lemma]:
    """The lemmas, built from the spec functions as they are *now* (a broken ``provider_slice`` or
    ``provider_value`` makes its lemma fail, and with it every check that relies on it)."""
    F, w, W, x, a, b, K, p, s, T = z3.Ints("L_F L_w L_W L_x L_a L_b L_K L_p L_s L_T")
    f = z3.Bool("L_f")
    piece = provider_slice(F, w, W)
    return {
        "div": Lemma("div: W>=1, F>=0, w>=0 -> 0 <= F*w - W*provider_slice(F,w,W) <= W-1", (F, w, W),
                     z3.And(0 <= F * w - W * piece, F * w - W * piece <= W - 1), [W >= 1, F >= 0, w >= 0]),
        "exact": Lemma("exact: W>=1, F==W -> provider_slice(F,w,W) == w", (F, w, W),
                       provider_slice(F, w, W) == w, [W >= 1, F == W]),
        "add": Lemma("distributive: x*(a+b) == x*a + x*b", (x, a, b), x * (a + b) == x * a + x * b),
        "sub": Lemma("distributive: x*(a-b) == x*a - x*b", (x, a, b), x * (a - b) == x * a - x * b),
        "comm": Lemma("commutative: a*b == b*a", (a, b), a * b == b * a),
        "mono": Lemma("monotone: W>=1 -> (W*x >= 0 -> x >= 0) and (W*x < W*K -> x < K)", (W, x, K),
                      z3.And(z3.Implies(W * x >= 0, x >= 0), z3.Implies(W * x < W * K, x < K)), [W >= 1]),
        "share": Lemma("quote: provider_value(p, s*T) == quoted_share(p, s, T)", (p, s, T),
                       provider_value(p, s * T) == quoted_share(p, s, T)),
        "split": Lemma("ite split: ite(f,0,x) + ite(f,x,0) == x (spec ite)", (f, x),
                       ite(f, 0, x) + ite(f, x, 0) == x),
    }


def prove_lemmas(table: dict[str, Lemma], *names: str) -> Iterator[Obligation]:
    for name in names:
        yield table[name].proof()


def _numeral(e: Any) -> bool:
    return z3.is_int_value(e) or z3.is_rational_value(e)


def _nonlinear(e: Any) -> bool:
    if not (z3.is_app(e) and z3.is_arith(e)):
        return False
    kind = e.decl().kind()
    args = e.children()
    if kind == z3.Z3_OP_MUL:
        return sum(1 for c in args if not _numeral(c)) >= 2
    if kind in (z3.Z3_OP_IDIV, z3.Z3_OP_DIV, z3.Z3_OP_MOD, z3.Z3_OP_REM):
        return not _numeral(args[1])
    return kind == z3.Z3_OP_POWER


def _nonlinear_terms(formulas: Sequence[Any]) -> list[Any]:
    """Maximal nonlinear subterms, outermost first (no descent below one), each once."""
    found: dict[int, Any] = {}
    seen: set[int] = set()
    todo = [f for f in formulas if z3.is_expr(f)]
    while todo:
        e = todo.pop()
        if e.get_id() in seen:
            continue
        seen.add(e.get_id())
        if _nonlinear(e):
            found[e.get_id()] = e
            continue
        todo.extend(e.children())
    return list(found.values())


def linearize(formulas: Sequence[Any]) -> list[Any]:
    """Replace each distinct maximal nonlinear subterm by one fresh Int named ``[term]``, in all
    ``formulas`` at once (sound: a generalisation). Raises if anything nonlinear is left."""
    terms = _nonlinear_terms(formulas)
    pairs = [(t, z3.Int(f"[{t.sexpr()}]")) for t in terms]  # sexpr: the pretty printer is slow
    out = [z3.substitute(f, *pairs) if pairs and z3.is_expr(f) else f for f in formulas]
    left = _nonlinear_terms(out)
    if left:
        raise ValueError(f"linearize: nonlinear terms remain: {left[:3]}")
    return out


def proved(label: str, claim: Any, hyps: Sequence[Any], bound: str = "") -> Obligation:
    """``valid`` on the linear abstraction of ``hyps -> claim``.

    Non-vacuity is checked on the abstracted hypotheses; they are the (linear) input domain plus
    instances of proved lemmas, which every assignment satisfies, so the real hypotheses are
    satisfiable whenever the domain is."""
    *hyps_lin, claim_lin = linearize([*hyps, claim])
    return valid(label, claim_lin, hyps_lin, bound)


def distribute(lemma_table: dict[str, Lemma], x: Any, term: Any) -> list[Any]:
    """Instances of the distributive lemmas expanding ``x * term`` down ``term``'s binary +/- tree
    (the spec's accumulation loops build exactly such trees, e.g. ``((0 + v0) + v1) + v2``)."""
    facts: list[Any] = []
    todo = [term]
    while todo:
        t = todo.pop()
        if not (z3.is_app(t) and t.num_args() == 2):
            continue
        kind = t.decl().kind()
        if kind == z3.Z3_OP_ADD:
            facts.append(lemma_table["add"].at(x, *t.children()))
            todo.extend(t.children())
        elif kind == z3.Z3_OP_SUB:
            facts.append(lemma_table["sub"].at(x, *t.children()))
            todo.extend(t.children())
    return facts


def _fold(terms: Sequence[Any]) -> Any:
    """Python's accumulation loop ``total = 0; for t in terms: total = total + t`` (the spec's shape)."""
    total: Any = 0
    for t in terms:
        total = total + t
    return total


# ---- symbolic instances ------------------------------------------------------------------------

class Instance:
    """Symbolic fee, N weights and failed flags; ``run`` is the spec's ``settle_parts`` on them."""

    def __init__(self, n: int, tag: str = "") -> None:
        self.n = n
        self.fee = z3.Int(f"fee{tag}")
        self.weights = [z3.Int(f"v{i}{tag}") for i in range(n)]
        self.flags = [z3.Bool(f"failed{i}{tag}") for i in range(n)]
        self.total = _fold(self.weights)  # the term settle_parts builds for its total weight

    def run(self, flags: Sequence[Any] | None = None, parts: Callable[..., Any] | None = None) -> Any:
        parts = parts or settle_parts
        return parts(self.fee, self.weights, list(self.flags if flags is None else flags))

    def domain(self) -> list[Any]:
        """Input domain of ``settle_parts``: fee >= 0, weights >= 0, total weight >= 1."""
        return [self.fee >= 0, self.total >= 1] + [v >= 0 for v in self.weights]

    def small(self) -> list[Any]:
        """Small ranges so a mutant's counterexample on the real (nonlinear) terms is found quickly."""
        return [self.fee <= 12] + [v <= 4 for v in self.weights]


class PricedInstance(Instance):
    """Weights are the spec's values: provider i offers ``price_i`` and serves ``work_i`` units per
    position for ``positions`` positions; ``quote`` is the sum of the spec's ``quoted_share``s."""

    def __init__(self, n: int, tag: str = "", value: Callable[..., Any] | None = None) -> None:
        super().__init__(n, tag)
        value = value or provider_value
        self.prices = [z3.Int(f"price{i}{tag}") for i in range(n)]
        self.per_position = [z3.Int(f"work_per_position{i}{tag}") for i in range(n)]
        self.positions = z3.Int(f"positions{tag}")
        self.works = [s * self.positions for s in self.per_position]
        self.weights = [value(p, w) for p, w in zip(self.prices, self.works)]
        self.total = _fold(self.weights)
        self.shares = [quoted_share(p, s, self.positions) for p, s in zip(self.prices, self.per_position)]
        self.quote = _fold(self.shares)

    def domain(self) -> list[Any]:
        """Prices, work and positions >= 0, a positive quote, and the fee equal to the quote."""
        return ([self.positions >= 0, self.quote >= 1, self.fee == self.quote]
                + [p >= 0 for p in self.prices] + [s >= 0 for s in self.per_position])

    def small(self) -> list[Any]:
        return ([self.positions <= 3] + [p <= 3 for p in self.prices] + [s <= 3 for s in self.per_position])


# ---- claims (shared by checks and mutants) -----------------------------------------------------

def conservation_claim(fee: Any, payouts: Sequence[Any], residual: Any, refund: Any) -> Any:
    return _fold(payouts) + residual + refund == fee


def residual_claim(residual: Any, n: Any) -> Any:
    return z3.And(residual >= 0, residual <= n - 1)


def isolation_claim(flags: Sequence[Any], marked: Sequence[Any], honest: Sequence[Any]) -> Any:
    return z3.And(*[z3.If(f, m == 0, m == h) for f, m, h in zip(flags, marked, honest)])


def exact_claim(flags: Sequence[Any], expected: Sequence[Any], payouts: Sequence[Any], residual: Any,
                refund: Any) -> Any:
    """Each payout is its expected amount (0 if failed), the refund is the failed amounts, residual 0."""
    paid = [p == ite(f, 0, e) for f, e, p in zip(flags, expected, payouts)]
    return z3.And(*paid, refund == _fold([ite(f, e, 0) for f, e in zip(flags, expected)]), residual == 0)


# ---- fee conservation --------------------------------------------------------------------------

@register("fee_conservation", spec_functions=(PARTS, SLICE), bound=BOUND, assumptions=(DOMAIN, WEIGHTS))
def fee_conservation() -> Iterator[Obligation]:
    """sum(payouts) + residual + refund == fee for every fee, every non-negative weight vector with a
    positive total (values included) and every failed set."""
    table = lemmas()
    yield table["split"].proof()
    for n in range(1, MAX_N + 1):
        inst = Instance(n)
        payouts, residual, refund = inst.run()
        # each provider's payout and refund terms split its slice (instances at the spec's slice terms)
        splits = [table["split"].at(f, provider_slice(inst.fee, v, inst.total)) for f, v in zip(inst.flags, inst.weights)]
        yield proved(f"conservation N={n}", conservation_claim(inst.fee, payouts, residual, refund),
                     inst.domain() + splits, "bounded")
    # all N: invariant Spay + Sref == Sq over the loop accumulators (payouts, refund, paid_slices).
    fee, spay, sref, sq, w, W = z3.Ints("fee Spay Sref Sq w W")
    failed = z3.Bool("failed")
    yield valid("induction base", z3.IntVal(0) + 0 == z3.IntVal(0), [])
    piece = provider_slice(fee, w, W)
    step_claim = (spay + ite(failed, 0, piece)) + (sref + ite(failed, piece, 0)) == sq + piece
    yield proved("induction step (spec loop body)", step_claim, [spay + sref == sq, W >= 1, fee >= 0, w >= 0])
    residual = fee - sq  # settle_parts: residual = fee - paid_slices
    yield valid("induction conclusion", spay + residual + sref == fee, [spay + sref == sq])


# ---- residual bound ----------------------------------------------------------------------------

def residual_facts(table: dict[str, Lemma], inst: Instance, residual: Any) -> list[Any]:
    """Lemma instances for one bounded query, all about the terms the spec actually built:
    the division bounds of each spec slice ``provider_slice(fee, v_i, W)``, ``fee*W`` and
    ``W*residual`` expanded over the spec's own sums, ``W*fee == fee*W``, and monotonicity at
    ``x = residual`` (the returned term itself)."""
    W = inst.total
    facts = [table["div"].at(inst.fee, v, W) for v in inst.weights]
    facts += distribute(table, inst.fee, W)
    facts += distribute(table, W, residual)
    facts.append(table["comm"].at(W, inst.fee))
    facts.append(table["mono"].at(W, residual, inst.n))
    return facts


@register("residual_bound", spec_functions=(PARTS, SLICE), bound=BOUND, assumptions=(DOMAIN, WEIGHTS))
def residual_bound() -> Iterator[Obligation]:
    """The lead's residual lies in [0, N-1] for N providers, for any non-negative weights (values
    included). Every product and quotient is tied to its definition by a proved lemma instance."""
    table = lemmas()
    yield from prove_lemmas(table, "div", "add", "sub", "comm", "mono")
    for n in range(1, MAX_N + 1):
        inst = Instance(n)
        _, residual, _ = inst.run()
        yield proved(f"residual in [0,N-1] N={n}", residual_claim(residual, n),
                     inst.domain() + residual_facts(table, inst, residual), "bounded")
    # all N: after k providers, with Sw = their weights and Sq the spec's paid_slices accumulator,
    # I(Sw, Sq, k) := 0 <= fee*Sw - W*Sq <= W*k - k. W is the total weight (W >= 1).
    fee, W, sw, sq, k, v, n = z3.Ints("fee W Sw Sq k v N")

    def inv(sw_: Any, sq_: Any, k_: Any) -> Any:
        gap = fee * sw_ - W * sq_
        return z3.And(0 <= gap, gap <= W * k_ - k_)

    yield proved("induction base", inv(0, 0, 0), [W >= 1, fee >= 0])
    piece = provider_slice(fee, v, W)  # the spec's loop body: paid_slices = paid_slices + piece
    step_facts = [table["div"].at(fee, v, W), table["add"].at(fee, sw, v), table["add"].at(W, sq, piece),
                  table["add"].at(W, k, 1)]
    yield proved("induction step (spec slice)", inv(sw + v, sq + piece, k + 1),
                 [inv(sw, sq, k), W >= 1, fee >= 0, v >= 0, k >= 0] + step_facts)
    # conclusion: after all N providers Sw is W (the same fold over the same weights as total_weight)
    residual = fee - sq  # settle_parts: residual = fee - paid_slices
    end_facts = [table["sub"].at(W, fee, sq), table["comm"].at(W, fee), table["mono"].at(W, residual, n)]
    yield proved("induction conclusion", residual_claim(residual, n),
                 [inv(W, sq, n), n >= 1, W >= 1, fee >= 0] + end_facts)


# ---- forfeit isolation -------------------------------------------------------------------------

@register("forfeit_isolation", spec_functions=(PARTS, SLICE), bound=BOUND, assumptions=(DOMAIN, WEIGHTS))
def forfeit_isolation() -> Iterator[Obligation]:
    """Any failed set: a failed provider gets exactly 0; every other provider's payout is unchanged
    (equal to its payout when nobody failed), for any non-negative weights (values included)."""
    for n in range(1, MAX_N + 1):
        inst = Instance(n)
        marked, _, _ = inst.run()
        honest, _, _ = inst.run([False] * n)
        yield proved(f"isolation N={n}", isolation_claim(inst.flags, marked, honest), inst.domain(), "bounded")
    # all N: payout i is the loop body ite(failed_i, 0, provider_slice(fee, v_i, W)); the slice reads
    # no flag, so one body obligation covers every index of every N.
    fee, v, W = z3.Ints("fee v W")
    failed = z3.Bool("failed")
    piece = provider_slice(fee, v, W)
    body = ite(failed, 0, piece)
    yield proved("loop body: failed -> 0, else unchanged slice",
                 z3.If(failed, body == 0, body == ite(False, 0, piece)), [W >= 1, fee >= 0, v >= 0])


# ---- fee equal to the quote: everyone gets exactly its value -----------------------------------

@register("quote_paid_exactly", spec_functions=(PARTS, SLICE, VALUE, SHARE),
          bound="N<=16 unrolled (weights, and priced values); all N by per-index lemmas and induction",
          assumptions=(DOMAIN, WEIGHTS, "quote >= 1 (a zero quote is rule S0's full refund)"))
def quote_paid_exactly() -> Iterator[Obligation]:
    """A fee equal to sum(weights) pays each provider exactly its weight (0 if failed, the weight
    refunded), residual 0. With the spec's values as weights: a fee equal to the quote
    (sum of ``quoted_share(price_i, work_per_position_i, positions)``) pays each provider exactly its
    quoted share, ``price_i x work_i``."""
    table = lemmas()
    yield from prove_lemmas(table, "exact", "share")
    for n in range(1, MAX_N + 1):
        inst = Instance(n)
        payouts, residual, refund = inst.run()
        facts = [table["exact"].at(inst.fee, v, inst.total) for v in inst.weights]
        yield proved(f"fee == sum(weights) N={n}", exact_claim(inst.flags, inst.weights, payouts, residual, refund),
                     inst.domain() + [inst.fee == inst.total] + facts, "bounded")
    for n in range(1, MAX_N + 1):
        priced = PricedInstance(n, "q")
        payouts, residual, refund = priced.run()
        facts = [table["share"].at(p, s, priced.positions) for p, s in zip(priced.prices, priced.per_position)]
        facts += [table["exact"].at(priced.fee, v, priced.total) for v in priced.weights]
        yield proved(f"fee == quote, priced N={n}", exact_claim(priced.flags, priced.shares, payouts, residual, refund),
                     priced.domain() + facts, "bounded")
    # all N. (1) per index: the slice of weight v under fee == W is v (lemma exact, on the spec's own
    # provider_slice); the payout/refund body reads only its own weight and flag.
    fee, W, v, sq, sv, sref, sfv = z3.Ints("fee W v Sq Sv Sref Sfv")
    failed = z3.Bool("failed")
    piece = provider_slice(fee, v, W)
    exact_v = table["exact"].at(fee, v, W)
    yield proved("loop body: payout ite(failed, 0, v), refund ite(failed, v, 0)",
                 z3.And(ite(failed, 0, piece) == ite(failed, 0, v), ite(failed, piece, 0) == ite(failed, v, 0)),
                 [W >= 1, fee == W, exact_v])
    # (2) accumulators: paid_slices == sum of weights so far, refund == failed weights so far.
    inv = z3.And(sq == sv, sref == sfv)
    yield valid("induction base", z3.And(z3.IntVal(0) == 0, z3.IntVal(0) == 0), [])
    stepped = z3.And(sq + piece == sv + v, sref + ite(failed, piece, 0) == sfv + ite(failed, v, 0))
    yield proved("induction step (spec slice)", stepped, [inv, W >= 1, fee == W, exact_v])
    # (3) conclusion: sum of all weights is W (the same fold as total_weight), so residual = fee - W = 0.
    yield valid("induction conclusion: residual 0", fee - sq == 0, [inv, sv == W, fee == W])
    # (4) priced: value_i == quoted_share_i per index (lemma share), so sum(values) == quote == fee,
    # i.e. fee == W, and (1)-(3) apply with weight_i = value_i = quoted_share_i.
    p, s, T, sshare = z3.Ints("p s T Sshare")
    yield valid("priced induction base: no members, no value, no quote", z3.IntVal(0) == 0, [])
    yield proved("priced induction step: sum(values) tracks sum(quoted shares)",
                 sv + provider_value(p, s * T) == sshare + quoted_share(p, s, T),
                 [sv == sshare, table["share"].at(p, s, T)])
    yield valid("priced induction conclusion: fee == quote -> fee == W", fee == W, [sv == sshare, sv == W, fee == sshare])


# ---- mutants: deliberately broken implementations, real terms, small ranges ----------------------

def ceiling_slice(fee: Any, weight: Any, total: Any) -> Any:
    """Mutant slice: ceiling instead of floor division."""
    return fdiv(fee * weight + total - 1, total)


def bare_work_value(price: Any, work: Any) -> Any:
    """Mutant value: the bare work, price ignored (the old rule)."""
    return work


def broken_parts(fee: Any, weights: Sequence[Any], flags: Sequence[Any], *,
                 slice_fn: Callable[..., Any] = provider_slice, residual_shift: int = 0, refund_shift: int = 0,
                 pays_failed: bool = False, renormalise: bool = False) -> tuple[list[Any], Any, Any]:
    """A deliberately wrong copy of ``settle_parts`` (one knob per mutant)."""
    total = _fold(weights)
    survivors = _fold([ite(f, 0, w) for w, f in zip(weights, flags)])
    payouts: list[Any] = []
    refund: Any = 0
    paid: Any = 0
    for w, f in zip(weights, flags):
        piece = slice_fn(fee, w, total)
        if renormalise:  # re-split the whole fee over the survivors; nothing refunded
            piece_s = ite(survivors >= 1, slice_fn(fee, w, ite(survivors >= 1, survivors, 1)), 0)
            payouts.append(ite(f, 0, piece_s))
            paid = paid + ite(f, 0, piece_s)
            continue
        payouts.append(piece if pays_failed else ite(f, 0, piece))
        refund = refund + ite(f, piece, 0)
        paid = paid + piece
    return payouts, fee - paid + residual_shift, refund + refund_shift


def _mutant_outputs(inst: Instance, **knobs: Any) -> tuple[list[Any], Any, Any]:
    return broken_parts(inst.fee, inst.weights, inst.flags, **knobs)


@register("fee_conservation_mutant_residual_ignores_refund", kind=Kind.MUTANT, property="fee_conservation",
          spec_functions=(PARTS,), bound="N=2")
def fee_conservation_mutant() -> Iterator[Obligation]:
    """Mutant: the lead's residual computed as fee - sum(payouts) (refund forgotten) still 'conserves'."""
    inst = Instance(2)
    payouts, _, refund = inst.run()
    wrong_residual = inst.fee - _fold(payouts)
    yield valid("mutant conservation N=2", conservation_claim(inst.fee, payouts, wrong_residual, refund),
                inst.domain() + inst.small())


@register("fee_conservation_mutant_off_by_one", kind=Kind.MUTANT, property="fee_conservation",
          spec_functions=(PARTS,), bound="N=2")
def fee_conservation_mutant_off_by_one() -> Iterator[Obligation]:
    """Mutant: residual one too large (fee - paid + 1) still 'conserves'."""
    inst = Instance(2)
    yield valid("mutant off-by-one conservation N=2", conservation_claim(inst.fee, *_mutant_outputs(inst, residual_shift=1)),
                inst.domain() + inst.small())


@register("fee_conservation_mutant_pays_failed", kind=Kind.MUTANT, property="fee_conservation",
          spec_functions=(PARTS,), bound="N=2")
def fee_conservation_mutant_pays_failed() -> Iterator[Obligation]:
    """Mutant: a failed shard is paid its slice and the slice is also refunded (counted twice)."""
    inst = Instance(2)
    yield valid("mutant pays failed conservation N=2", conservation_claim(inst.fee, *_mutant_outputs(inst, pays_failed=True)),
                inst.domain() + inst.small())


@register("residual_bound_mutant_strict", kind=Kind.MUTANT, property="residual_bound",
          spec_functions=(PARTS,), bound="N=3")
def residual_bound_mutant() -> Iterator[Obligation]:
    """Mutant claim: residual < N-1 (strict) -- false, e.g. fee=2 split over three equal weights."""
    inst = Instance(3)
    _, residual, _ = inst.run()
    yield valid("mutant residual < N-1, N=3", residual < 3 - 1, inst.domain() + inst.small())


@register("residual_bound_mutant_ceiling", kind=Kind.MUTANT, property="residual_bound",
          spec_functions=(PARTS, SLICE), bound="N=3")
def residual_bound_mutant_ceiling() -> Iterator[Obligation]:
    """Mutant: ceiling division in the slice -- the residual goes negative (fee 2 over three equal
    weights pays 1+1+1)."""
    inst = Instance(3)
    _, residual, _ = _mutant_outputs(inst, slice_fn=ceiling_slice)
    yield valid("mutant ceiling residual in [0,N-1], N=3", residual_claim(residual, 3), inst.domain() + inst.small())


@register("residual_bound_mutant_off_by_one", kind=Kind.MUTANT, property="residual_bound",
          spec_functions=(PARTS,), bound="N=2")
def residual_bound_mutant_off_by_one() -> Iterator[Obligation]:
    """Mutant: residual + 1 (taken from the refund, so the fee is still conserved) exceeds N-1."""
    inst = Instance(2)
    _, residual, _ = _mutant_outputs(inst, residual_shift=1, refund_shift=-1)
    yield valid("mutant off-by-one residual in [0,N-1], N=2", residual_claim(residual, 2), inst.domain() + inst.small())


@register("forfeit_isolation_mutant_renormalise", kind=Kind.MUTANT, property="forfeit_isolation",
          spec_functions=(PARTS,), bound="N=2")
def forfeit_isolation_mutant() -> Iterator[Obligation]:
    """Mutant: re-split the fee over survivors only -- changes the others' pay."""
    inst = Instance(2)
    marked, _, _ = _mutant_outputs(inst, renormalise=True)
    honest, _, _ = broken_parts(inst.fee, inst.weights, [False, False], renormalise=True)
    yield valid("mutant renormalise isolation N=2", isolation_claim(inst.flags, marked, honest),
                inst.domain() + inst.small())


@register("forfeit_isolation_mutant_pays_failed", kind=Kind.MUTANT, property="forfeit_isolation",
          spec_functions=(PARTS,), bound="N=2")
def forfeit_isolation_mutant_pays_failed() -> Iterator[Obligation]:
    """Mutant: payout to a failed shard (the failed flag ignored) -- a failed provider gets > 0."""
    inst = Instance(2)
    marked, _, _ = _mutant_outputs(inst, pays_failed=True)
    honest, _, _ = inst.run([False, False])
    yield valid("mutant pays failed isolation N=2", isolation_claim(inst.flags, marked, honest),
                inst.domain() + inst.small())


def _quote_mutant(label: str, value: Callable[..., Any] | None = None, **knobs: Any) -> Obligation:
    priced = PricedInstance(2, "m", value=value)
    payouts, residual, refund = broken_parts(priced.fee, priced.weights, priced.flags, **knobs)
    return valid(label, exact_claim(priced.flags, priced.shares, payouts, residual, refund),
                 priced.domain() + priced.small())


@register("quote_paid_exactly_mutant_bare_work", kind=Kind.MUTANT, property="quote_paid_exactly",
          spec_functions=(PARTS, VALUE), bound="N=2")
def quote_paid_exactly_mutant_bare_work() -> Iterator[Obligation]:
    """Mutant: split by bare work instead of value -- at a fee equal to the quote, a provider with a
    higher price is paid less than its quoted share (the old rule S1)."""
    yield _quote_mutant("mutant bare work, fee == quote, N=2", value=bare_work_value)


@register("quote_paid_exactly_mutant_off_by_one", kind=Kind.MUTANT, property="quote_paid_exactly",
          spec_functions=(PARTS,), bound="N=2")
def quote_paid_exactly_mutant_off_by_one() -> Iterator[Obligation]:
    """Mutant: residual one too large -- at fee == quote the residual is not 0."""
    yield _quote_mutant("mutant off-by-one, fee == quote, N=2", residual_shift=1)


@register("quote_paid_exactly_mutant_pays_failed", kind=Kind.MUTANT, property="quote_paid_exactly",
          spec_functions=(PARTS,), bound="N=2")
def quote_paid_exactly_mutant_pays_failed() -> Iterator[Obligation]:
    """Mutant: a failed shard keeps its quoted share."""
    yield _quote_mutant("mutant pays failed, fee == quote, N=2", pays_failed=True)


@register("quote_paid_exactly_mutant_renormalise", kind=Kind.MUTANT, property="quote_paid_exactly",
          spec_functions=(PARTS,), bound="N=2")
def quote_paid_exactly_mutant_renormalise() -> Iterator[Obligation]:
    """Mutant: survivors share a failed shard's quote -- they are paid more than their shares."""
    yield _quote_mutant("mutant renormalise, fee == quote, N=2", renormalise=True)
