/-
Mirror of `spec/settlement.py` (`provider_slice`, `settle_parts`).

Values are natural numbers: `settle` rejects negative fees and works before calling `settle_parts`.
Python's loops over `zip(works, failed_flags)` become structural recursion over both lists, stopping
at the shorter one exactly as `zip` does. Python's `ite(failed, a, b)` is `cond failed a b`.
-/
namespace Verisplit

/-- Python's accumulation loop `total = 0; for x in xs: total = total + x`. -/
def sumList : List Nat → Nat
  | [] => 0
  | x :: xs => x + sumList xs

/-- Rule S1, `provider_slice`: `fee * work // total_work`. -/
def providerSlice (fee work totalWork : Nat) : Nat :=
  fee * work / totalWork

/-- The `payouts` list of `settle_parts`: 0 for a failed provider, its slice otherwise (rule S2). -/
def payoutsOf (fee totalWork : Nat) : List Nat → List Bool → List Nat
  | [], _ => []
  | _ :: _, [] => []
  | w :: ws, f :: fs => cond f 0 (providerSlice fee w totalWork) :: payoutsOf fee totalWork ws fs

/-- The `refund` accumulator of `settle_parts`: the slices of failed providers (rule S2). -/
def refundOf (fee totalWork : Nat) : List Nat → List Bool → Nat
  | [], _ => 0
  | _ :: _, [] => 0
  | w :: ws, f :: fs => cond f (providerSlice fee w totalWork) 0 + refundOf fee totalWork ws fs

/-- The `paid_slices` accumulator of `settle_parts`: the sum of all slices over the zip. -/
def paidSlicesOf (fee totalWork : Nat) : List Nat → List Bool → Nat
  | [], _ => 0
  | _ :: _, [] => 0
  | w :: ws, _ :: fs => providerSlice fee w totalWork + paidSlicesOf fee totalWork ws fs

/-- The triple `(payouts, residual, refund)` returned by `settle_parts`. -/
structure SettleParts where
  payouts : List Nat
  residual : Nat
  refund : Nat

/-- `settle_parts(fee, works, failed_flags)`: the residual is `fee - paid_slices` (rule S3). -/
def settleParts (fee : Nat) (works : List Nat) (failedFlags : List Bool) : SettleParts :=
  { payouts := payoutsOf fee (sumList works) works failedFlags
    residual := fee - paidSlicesOf fee (sumList works) works failedFlags
    refund := refundOf fee (sumList works) works failedFlags }

/-- Position `i` of a list (Python's `xs[i]`), `none` past the end. Own definition, so the proofs
do not depend on core list-indexing lemma names. -/
def lookup {α : Type} : List α → Nat → Option α
  | [], _ => none
  | x :: _, 0 => some x
  | _ :: xs, n + 1 => lookup xs n

end Verisplit
