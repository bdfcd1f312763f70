/-
Recovery (rules R1-R3 of `verisplit.spec.recovery`). Mirrored by the Z3 checks `replacement_valid`,
`replay_pinned` and `outage_refund_exact`.
Core lemmas used: `Nat.le_trans`, `Nat.lt_of_lt_of_le`, `List.cons_append`, `Nat.mul_div_cancel_left`.
-/
import Verisplit.Spec.Recovery

namespace Verisplit

/-- R1: a replacement whose offer covers the failed range serves every layer of it (rule C1). -/
theorem replacement_covers (of oe f e x : Nat) (h : covers of oe f e) (hx : f ≤ x ∧ x < e) :
    of ≤ x ∧ x < oe := by
  obtain ⟨h1, h2⟩ := h
  obtain ⟨hx1, hx2⟩ := hx
  exact ⟨Nat.le_trans h1 hx1, Nat.lt_of_lt_of_le hx2 h2⟩

/-- R2: replaying steps 0..s-1 and then step s covers the positions of steps 0..s, so the replay
ends exactly at step s's first position. -/
theorem replay_positions (steps : List Nat) (n : Nat) :
    sumList (steps ++ [n]) = sumList steps + n := by
  induction steps with
  | nil => simp [sumList]
  | cons s ss ih =>
    simp only [List.cons_append, sumList, ih]
    omega

/-- R3: with the fee equal to the total value `W` (>= 1), a provider of value `w` gets
`fee * w / W = w`: exactly its value (and a forfeited one's value is what is refunded). -/
theorem outage_refund_exact (w W : Nat) (h : 0 < W) : W * w / W = w :=
  Nat.mul_div_cancel_left w h

end Verisplit
