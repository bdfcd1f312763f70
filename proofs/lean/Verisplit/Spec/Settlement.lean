/-
Mirror of `spec/settlement.py` (`provider_value`, `quoted_share`, `provider_slice`, `settle_parts`).

`settle_parts` is generic over weights: any natural numbers (Python's `settle` passes the values
`price * work`, rule S0, and handles a zero total by refunding the whole fee before calling it).
Values are natural numbers: `settle` rejects negative fees, works and prices. Python's loops over
`zip(weights, failed_flags)` become structural recursion over both lists, stopping at the shorter one
exactly as `zip` does. Python's `ite(failed, a, b)` is `cond failed a b`.
-/
namespace Verisplit

/-- Python's accumulation loop `total = 0; for x in xs: total = total + x`. -/
def sumList : List Nat → Nat
  | [] => 0
  | x :: xs => x + sumList xs

/-- Rule S0, `provider_value`: the value of `work` units at `price` per unit. -/
def providerValue (price work : Nat) : Nat :=
  price * work

/-- `quoted_share`: what the quote charges one member, `price * work_per_position * positions`
(Lean's `*` associates to the left, as Python's does). -/
def quotedShare (price workPerPosition positions : Nat) : Nat :=
  price * workPerPosition * positions

/-- The values `settle` passes for members with `prices` and `perPosition` work, served for
`positions` positions: `[provider_value(p, s * positions) for p, s in zip(prices, perPosition)]`. -/
def valuesOf (positions : Nat) : List Nat → List Nat → List Nat
  | [], _ => []
  | _ :: _, [] => []
  | p :: ps, s :: ss => providerValue p (s * positions) :: valuesOf positions ps ss

/-- The quote, `sum(quoted_share(p, s, positions))` over the zip (= `cohort.quote_fee`). -/
def quoteOf (positions : Nat) : List Nat → List Nat → Nat
  | [], _ => 0
  | _ :: _, [] => 0
  | p :: ps, s :: ss => quotedShare p s positions + quoteOf positions ps ss

/-- Rule S1, `provider_slice`: `fee * weight // total_weight`. -/
def providerSlice (fee weight totalWeight : Nat) : Nat :=
  fee * weight / totalWeight

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

/-- `settle_parts(fee, weights, failed_flags)`: the residual is `fee - paid_slices` (rule S3). -/
def settleParts (fee : Nat) (weights : List Nat) (failedFlags : List Bool) : SettleParts :=
  { payouts := payoutsOf fee (sumList weights) weights failedFlags
    residual := fee - paidSlicesOf fee (sumList weights) weights failedFlags
    refund := refundOf fee (sumList weights) weights failedFlags }

/-- Position `i` of a list (Python's `xs[i]`), `none` past the end. Own definition, so the proofs
do not depend on core list-indexing lemma names. -/
def lookup {α : Type} : List α → Nat → Option α
  | [], _ => none
  | x :: _, 0 => some x
  | _ :: xs, n + 1 => lookup xs n

end Verisplit
