/-
Chain soundness (rule H3) for chains of any length. Digest injectivity is an explicit hypothesis.
Core lemmas relied on: `decide_eq_true`, `decide_eq_false`, `Nat.zero_add`, `congrArg`,
`Eq.trans`; the rest is unfolding of our definitions (`rfl`) and `omega`.
-/
import Verisplit.Spec.Commitment

namespace Verisplit

/-- A link whose input digest equals the expected one passes. -/
theorem linkRule_self {D : Type} [DecidableEq D] (a : D) : linkRule a a = true := by
  show decide (a = a) = true
  exact decide_eq_true rfl

/-- A link whose input digest differs from the expected one fails. -/
theorem linkRule_ne {D : Type} [DecidableEq D] (a b : D) (h : a ≠ b) : linkRule a b = false := by
  show decide (a = b) = false
  exact decide_eq_false h

/-- An honest chain passes from any starting index. Induction on the outputs: each honest link's
input digest is `H x`, exactly the previous output digest, so `linkRule_self` lets the loop go on. -/
theorem checkChainFrom_honest {T D : Type} [DecidableEq D] (H : T → D) :
    ∀ (outs : List T) (x : T) (k : Nat), checkChainFrom (H x) (honestLinks H x outs) k = none := by
  intro outs
  induction outs with
  | nil =>
    intro x k
    rfl
  | cons y ys ih =>
    intro x k
    have step : checkChainFrom (H x) (honestLinks H x (y :: ys)) k
        = cond (linkRule (H x) (H x)) (checkChainFrom (H y) (honestLinks H y ys) (k + 1)) (some k) :=
      rfl
    have e := congrArg (fun b => cond b (checkChainFrom (H y) (honestLinks H y ys) (k + 1)) (some k))
      (linkRule_self (H x))
    exact step.trans (e.trans (ih y (k + 1)))

/-- An honest prefix is transparent: checking `honest ++ tail` from index `k` is checking `tail`
from index `k + length`, expecting the digest of the prefix's last output. Induction on the prefix,
as in `checkChainFrom_honest`; `k + 1 + n = k + (n + 1)` by `omega`. -/
theorem checkChainFrom_honest_append {T D : Type} [DecidableEq D] (H : T → D) (tail : List (Link D)) :
    ∀ (pre : List T) (x : T) (k : Nat),
      checkChainFrom (H x) (honestLinks H x pre ++ tail) k
        = checkChainFrom (H (lastOr x pre)) tail (k + pre.length) := by
  intro pre
  induction pre with
  | nil =>
    intro x k
    rfl
  | cons y ys ih =>
    intro x k
    have step : checkChainFrom (H x) (honestLinks H x (y :: ys) ++ tail) k
        = cond (linkRule (H x) (H x)) (checkChainFrom (H y) (honestLinks H y ys ++ tail) (k + 1))
            (some k) :=
      rfl
    have e := congrArg
      (fun b => cond b (checkChainFrom (H y) (honestLinks H y ys ++ tail) (k + 1)) (some k))
      (linkRule_self (H x))
    have hk : k + 1 + ys.length = k + (y :: ys).length := by
      show k + 1 + ys.length = k + (ys.length + 1)
      omega
    exact step.trans (e.trans ((ih y (k + 1)).trans
      (congrArg (checkChainFrom (H (lastOr y ys)) tail) hk)))

/-- Chain soundness (rule H3), for chains of any length: if the links before `j = pre.length` are
honest and the tensor consumed at link `j` is substituted (`x' ≠` the true input), then, with an
injective digest `H`, `checkChain` reports exactly link `j` (so every earlier link passed).
Argument: the honest prefix passes (`checkChainFrom_honest_append`); at link `j`,
`H (true input) ≠ H x'` by injectivity, so `linkRule_ne` fails there. -/
theorem chain_detects_at {T D : Type} [DecidableEq D] (H : T → D)
    (hInj : ∀ a b, H a = H b → a = b)
    (x0 : T) (pre : List T) (x' : T) (out : D) (rest : List (Link D))
    (hSub : x' ≠ lastOr x0 pre) :
    checkChain (H x0) (honestLinks H x0 pre ++ Link.mk (H x') out :: rest) = some pre.length := by
  have e1 := checkChainFrom_honest_append H (Link.mk (H x') out :: rest) pre x0 0
  have hne : H (lastOr x0 pre) ≠ H x' := fun h => hSub (hInj (lastOr x0 pre) x' h).symm
  have hl : linkRule (H (lastOr x0 pre)) (H x') = false := linkRule_ne _ _ hne
  have e2 : checkChainFrom (H (lastOr x0 pre)) (Link.mk (H x') out :: rest) (0 + pre.length)
      = cond (linkRule (H (lastOr x0 pre)) (H x')) (checkChainFrom out rest (0 + pre.length + 1))
          (some (0 + pre.length)) :=
    rfl
  have e3 := congrArg
    (fun b => cond b (checkChainFrom out rest (0 + pre.length + 1)) (some (0 + pre.length))) hl
  have e4 : 0 + pre.length = pre.length := Nat.zero_add pre.length
  exact e1.trans (e2.trans (e3.trans (congrArg some e4)))

/-- An unmodified chain passes (`checkChain` returns `none`): `checkChainFrom_honest` at index 0. -/
theorem chain_valid_of_honest {T D : Type} [DecidableEq D] (H : T → D) (x0 : T) (outs : List T) :
    checkChain (H x0) (honestLinks H x0 outs) = none :=
  checkChainFrom_honest H outs x0 0

end Verisplit
