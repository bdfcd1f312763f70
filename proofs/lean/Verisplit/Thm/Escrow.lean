/-
Escrow and probation theorems for all N (histories of any length) and every window length:
conservation (E3) step by step and over whole histories, the failure and no-failure steps (E1, E2),
the window after a failure-free history is the last V payouts, probation (P1), and the escrow form
of deterrence (D3-D5).

Lemmas relied on from core: `Int.mul_add`, `Int.mul_nonneg`, `Int.sub_mul`, `Int.mul_assoc`,
`Int.add_mul`, `Int.one_mul`, `if_pos`, `if_neg`; the list facts are proved here by induction
(`append_one_append`, `append_nil'`, `sumList_append`, ...), so no core list-lemma names are relied
on. Everything else is unfolding of our own definitions (`rfl`, `show`), `cases`, and linear
arithmetic (`omega`, which treats products of variables as atoms).
-/
import Verisplit.Spec.Escrow

namespace Verisplit

/-- `sum(w + [x]) = sum(w) + x`. -/
theorem sumList_append (w : List Nat) (x : Nat) : sumList (w ++ [x]) = sumList w + x := by
  induction w with
  | nil =>
    show x + 0 = 0 + x
    omega
  | cons a w ih =>
    have hi := ih
    show a + sumList (w ++ [x]) = (a + sumList w) + x
    omega

/-- A window of zeros holds nothing. -/
theorem sumList_zeros (n : Nat) : sumList (zeros n) = 0 := by
  induction n with
  | zero => rfl
  | succ n ih =>
    have hi := ih
    show 0 + sumList (zeros n) = 0
    omega

/-- `len([0] * n) = n`. -/
theorem length_zeros (n : Nat) : (zeros n).length = n := by
  induction n with
  | zero => rfl
  | succ n ih =>
    have hi := ih
    show (zeros n).length + 1 = n + 1
    omega

/-- `len(w + [x]) = len(w) + 1`. -/
theorem length_append_one (w : List Nat) (x : Nat) : (w ++ [x]).length = w.length + 1 := by
  induction w with
  | nil => rfl
  | cons _ w ih =>
    have hi := ih
    show (w ++ [x]).length + 1 = (w.length + 1) + 1
    omega

/-- `(w + [x]) + xs = w + (x :: xs)`. -/
theorem append_one_append (w : List Nat) (x : Nat) (xs : List Nat) : (w ++ [x]) ++ xs = w ++ x :: xs := by
  induction w with
  | nil => rfl
  | cons a w ih =>
    show a :: ((w ++ [x]) ++ xs) = a :: (w ++ x :: xs)
    rw [ih]

/-- `w + [] = w`. -/
theorem append_nil' (w : List Nat) : w ++ [] = w := by
  induction w with
  | nil => rfl
  | cons a w ih =>
    show a :: (w ++ []) = a :: w
    rw [ih]

/-- The no-failure step moves amounts, never creates or loses them: `sum(w') + released = sum(w) + x`. -/
theorem shiftIn_total (w : List Nat) (x : Nat) : sumList (shiftIn w x).1 + (shiftIn w x).2 = sumList w + x := by
  cases w with
  | nil => rfl
  | cons a w =>
    show sumList (w ++ [x]) + a = (a + sumList w) + x
    have h := sumList_append w x
    omega

/-- The no-failure step keeps the window's length. -/
theorem shiftIn_length (w : List Nat) (x : Nat) : (shiftIn w x).1.length = w.length := by
  cases w with
  | nil => rfl
  | cons _ w =>
    show (w ++ [x]).length = w.length + 1
    exact length_append_one w x

/-- Rule E1 (`escrow_step` without failure): the payout enters, the oldest amount vests, nothing is
forfeited, and amounts are conserved. -/
theorem escrowStep_noFail (w : List Nat) (x : Nat) :
    escrowStep w x false = ((shiftIn w x).1, (shiftIn w x).2, 0) ∧
      sumList (escrowStep w x false).1 + (escrowStep w x false).2.1 = sumList w + x ∧
      (escrowStep w x false).1.length = w.length :=
  ⟨rfl, shiftIn_total w x, shiftIn_length w x⟩

/-- Rule E2 (`escrow_step` with failure): everything held and the payout are forfeited, nothing vests,
and the window is emptied (all zeros, same length). -/
theorem escrowStep_fail (w : List Nat) (x : Nat) :
    (escrowStep w x true).2.2 = sumList w + x ∧ (escrowStep w x true).2.1 = 0 ∧
      sumList (escrowStep w x true).1 = 0 ∧ (escrowStep w x true).1.length = w.length :=
  ⟨rfl, rfl, sumList_zeros w.length, length_zeros w.length⟩

/-- Rule E3, one request: an account that conserves still conserves after any request, failed or not. -/
theorem accountStep_conserves (a : Account) (x : Nat) (f : Bool) (h : conserved a) :
    conserved (accountStep a x f) := by
  have h' : sumList a.window + a.vested + a.forfeited = a.paid := h
  cases f with
  | false =>
    show sumList (shiftIn a.window x).1 + (a.vested + (shiftIn a.window x).2) + (a.forfeited + 0) = a.paid + x
    have hs := shiftIn_total a.window x
    omega
  | true =>
    show sumList (zeros a.window.length) + (a.vested + 0) + (a.forfeited + (sumList a.window + x)) = a.paid + x
    have hz := sumList_zeros a.window.length
    omega

/-- Rule E3 for every history (all N): conservation is preserved by any sequence of requests. -/
theorem run_conserves : ∀ (steps : List (Nat × Bool)) (a : Account), conserved a → conserved (runHistory a steps) := by
  intro steps
  induction steps with
  | nil =>
    intro a h
    exact h
  | cons s rest ih =>
    intro a h
    show conserved (runHistory (accountStep a s.1 s.2) rest)
    exact ih (accountStep a s.1 s.2) (accountStep_conserves a s.1 s.2 h)

/-- A fresh key conserves after any history, for any window length: held + vested + forfeited = paid. -/
theorem fresh_conserves (v : Nat) (steps : List (Nat × Bool)) : conserved (runHistory (freshAccount v) steps) := by
  apply run_conserves
  show sumList (zeros v) + 0 + 0 = 0
  have hz := sumList_zeros v
  omega

/-- The window after a failure-free history `xs` is the last `len(w)` entries of `w ++ xs`. -/
theorem runWindow_eq : ∀ (xs w : List Nat), runWindow w xs = List.drop xs.length (w ++ xs) := by
  intro xs
  induction xs with
  | nil =>
    intro w
    show w = w ++ []
    exact (append_nil' w).symm
  | cons x xs ih =>
    intro w
    show runWindow (shiftIn w x).1 xs = List.drop (xs.length + 1) (w ++ x :: xs)
    rw [ih]
    cases w with
    | nil => rfl
    | cons _ w =>
      show List.drop xs.length ((w ++ [x]) ++ xs) = List.drop xs.length (w ++ x :: xs)
      rw [append_one_append]

/-- `run` without failures moves the window exactly as `runWindow`. -/
theorem run_noFail_window : ∀ (xs : List Nat) (a : Account),
    (runHistory a (xs.map (fun x => (x, false)))).window = runWindow a.window xs := by
  intro xs
  induction xs with
  | nil =>
    intro a
    rfl
  | cons x xs ih =>
    intro a
    exact ih (accountStep a x false)

/-- Rule E1 for all N: after a failure-free history with payouts `xs`, the key holds exactly the last
`len(window)` entries of `window ++ xs` (a fresh key: the last V payouts, zero-padded), so no payout
vests before V later requests. -/
theorem runNoFail_window (xs : List Nat) (a : Account) :
    (runHistory a (xs.map (fun x => (x, false)))).window = List.drop xs.length (a.window ++ xs) :=
  (run_noFail_window xs a).trans (runWindow_eq xs a.window)

/-- Rule P1: during probation (`served < M`) the audit probability is 1. -/
theorem auditProbability_probation {α : Type} (one p : α) (served probation : Nat) (h : served < probation) :
    auditProbability one p served probation = one := by
  show (if served < probation then one else p) = one
  exact if_pos h

/-- Rule P1: after probation (`M ≤ served`) the audit probability is the operator's p. -/
theorem auditProbability_after {α : Type} (one p : α) (served probation : Nat) (h : probation ≤ served) :
    auditProbability one p served probation = p := by
  show (if served < probation then one else p) = p
  exact if_neg (by omega)

/-- Rule D3: with escrow `E` held and detection probability `p ≥ 0`, the expected loss of cheating is at
least `p * E` (for any payout `x ≥ 0`). -/
theorem escrowLoss_ge (p held payout : Int) (hp : 0 ≤ p) (hx : 0 ≤ payout) :
    p * held ≤ escrowExpectedLoss p held payout := by
  show p * held ≤ p * (held + payout)
  have h1 : p * (held + payout) = p * held + p * payout := Int.mul_add p held payout
  have h2 : 0 ≤ p * payout := Int.mul_nonneg hp hx
  omega

/-- D1 with the escrow exposure in place of F: if `p * (E + x)` covers the whole model's cost `C` and the
shard saves `s ≤ C_k ≤ C`, the shard's margin is non-negative. -/
theorem escrow_shard_deterred (p held payout wholeCost shardSavings shardCost : Int)
    (hWhole : wholeCost ≤ escrowExpectedLoss p held payout) (hSave : shardSavings ≤ shardCost)
    (hShard : shardCost ≤ wholeCost) :
    0 ≤ escrowMargin p held payout shardSavings := by
  have hw : wholeCost ≤ p * (held + payout) := hWhole
  show 0 ≤ p * (held + payout) - shardSavings
  omega

/-- D2 with the escrow exposure: at the same exposure a smaller shard (`C_i < C_j`) has a larger margin. -/
theorem escrow_smaller_shard_larger_margin (p held payout costI costJ : Int) (h : costI < costJ) :
    escrowMargin p held payout costJ < escrowMargin p held payout costI := by
  show p * (held + payout) - costJ < p * (held + payout) - costI
  omega

/-- P1 with D3: during probation (detection 1) any cheat saving at most the request's payout is deterred,
whatever the escrow `E ≥ 0`. -/
theorem probation_deters (held payout savings : Int) (hE : 0 ≤ held) (hs : savings ≤ payout) :
    0 ≤ escrowMargin 1 held payout savings := by
  have h1 : (1 : Int) * (held + payout) = held + payout := Int.one_mul (held + payout)
  show 0 ≤ 1 * (held + payout) - savings
  omega

/-- Rules D4-D5: with `h` requests of value `v` held, the margin of a cheat saving `sigma * v` on a
request of value `v` is `(p * (h + 1) - sigma) * v`, the per-unit margin times the value, so its sign does
not depend on the shard's size. -/
theorem franchise_scales (p h sigma v : Int) :
    escrowMargin p (h * v) v (sigma * v) = (p * (h + 1) - sigma) * v := by
  show p * (h * v + v) - sigma * v = (p * (h + 1) - sigma) * v
  rw [Int.sub_mul, Int.mul_assoc, Int.add_mul, Int.one_mul]

/-- D5: a non-negative `franchise_margin` deters every shard of every value `v ≥ 0`: at the first sampled
request the key holds `min(M, V)` requests' worth, and any cheat saving at most `sigma * v` does not pay. -/
theorem franchise_deters_every_shard (p sigma v savings : Int) (probation window : Nat)
    (hm : 0 ≤ franchiseMargin p probation window sigma) (hv : 0 ≤ v) (hs : savings ≤ sigma * v) :
    0 ≤ escrowMargin p ((heldRequests probation window : Int) * v) v savings := by
  have hscale := franchise_scales p (heldRequests probation window : Int) sigma v
  have hpos : 0 ≤ (p * ((heldRequests probation window : Int) + 1) - sigma) * v := Int.mul_nonneg hm hv
  have hm1 : escrowMargin p ((heldRequests probation window : Int) * v) v savings
      = p * ((heldRequests probation window : Int) * v + v) - savings := rfl
  have hm2 : escrowMargin p ((heldRequests probation window : Int) * v) v (sigma * v)
      = p * ((heldRequests probation window : Int) * v + v) - sigma * v := rfl
  omega

end Verisplit
