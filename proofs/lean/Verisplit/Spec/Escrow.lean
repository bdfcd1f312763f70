/-
Mirror of `spec/escrow.py`: probation (`audit_probability`, rule P1), the vesting escrow
(`escrow_step`, `account_step`, rules E1-E3) and its deterrence (`escrow_expected_loss`,
`escrow_margin`, `exposure_requests`, `franchise_margin`, rules D3-D4).

Amounts are natural numbers (payouts are never negative). The window is a list, oldest first, as in
Python; `shiftIn` is the no-failure branch of `escrow_step` (push the payout at the new end, release
the oldest; for an empty window the payout itself is released), and a failure replaces the window by
zeros of the same length (Python's `[ite(failed, 0, a) for a in shifted[1:]]`). Python's `ite(failed,
a, b)` is `cond failed a b`. The deterrence quantities are over `Int` (core Lean has no rationals;
the statements are homogeneous in p and sigma, so rational instances follow by scaling with a common
positive denominator), and `auditProbability` is generic in the type of probabilities.
-/
import Verisplit.Spec.Settlement
import Verisplit.Spec.Deterrence

namespace Verisplit

/-- `audit_probability(p, served, probation_requests)` (rule P1): `one` (probability 1) while the key
has served fewer than `probation` requests, else the operator's `p`. -/
def auditProbability {α : Type} (one p : α) (served probation : Nat) : α :=
  if served < probation then one else p

/-- `[0] * n`. -/
def zeros : Nat → List Nat
  | 0 => []
  | n + 1 => 0 :: zeros n

/-- The no-failure branch of `escrow_step`: `shifted = window + [payout]`, returns
`(shifted[1:], shifted[0])`, the new window and the amount that vests. -/
def shiftIn : List Nat → Nat → List Nat × Nat
  | [], x => ([], x)
  | a :: w, x => (w ++ [x], a)

/-- `escrow_step(window, payout, failed)`: `(window', vested_now, forfeited_now)`; `window_total` is
`sumList`. -/
def escrowStep (w : List Nat) (x : Nat) (failed : Bool) : List Nat × Nat × Nat :=
  cond failed (zeros w.length, 0, sumList w + x) ((shiftIn w x).1, (shiftIn w x).2, 0)

/-- A key's escrow state as `account_step` threads it: window, vested, forfeited, paid. -/
structure Account where
  window : List Nat
  vested : Nat
  forfeited : Nat
  paid : Nat

/-- `account_step(window, vested, forfeited, paid, payout, failed)`. -/
def accountStep (a : Account) (x : Nat) (failed : Bool) : Account :=
  { window := (escrowStep a.window x failed).1
    vested := a.vested + (escrowStep a.window x failed).2.1
    forfeited := a.forfeited + (escrowStep a.window x failed).2.2
    paid := a.paid + x }

/-- Rule E3: held + vested + forfeited = paid. -/
def conserved (a : Account) : Prop :=
  sumList a.window + a.vested + a.forfeited = a.paid

/-- A fresh key's account for a window of `v` slots. -/
def freshAccount (v : Nat) : Account :=
  { window := zeros v, vested := 0, forfeited := 0, paid := 0 }

/-- A history of requests, each `(payout, failed)`, applied in order. -/
def runHistory : Account → List (Nat × Bool) → Account
  | a, [] => a
  | a, s :: rest => runHistory (accountStep a s.1 s.2) rest

/-- The window after requests with payouts `xs` and no failure. -/
def runWindow : List Nat → List Nat → List Nat
  | w, [] => w
  | w, x :: xs => runWindow (shiftIn w x).1 xs

/-- `escrow_expected_loss(p, held, payout)` (rule D3): `p * (held + payout)`. -/
def escrowExpectedLoss (p held payout : Int) : Int :=
  p * (held + payout)

/-- `escrow_margin(p, held, payout, savings)`: the margin with the escrow exposure in place of F. -/
def escrowMargin (p held payout savings : Int) : Int :=
  marginFromExpectedLoss (escrowExpectedLoss p held payout) savings

/-- The held part of `exposure_requests(M, V)`: `min(M, V)` as Python's `ite(M < V, M, V)`. -/
def heldRequests (probation window : Nat) : Nat :=
  if probation < window then probation else window

/-- `franchise_margin(p, M, V, sigma)` (rule D4): `p * (min(M, V) + 1) - sigma` per unit of value. -/
def franchiseMargin (p : Int) (probation window : Nat) (sigma : Int) : Int :=
  p * ((heldRequests probation window : Int) + 1) - sigma

end Verisplit
