/-
Rule H5 (`check_boundary`): a signed boundary output passes exactly when it is a finite tensor of the
boundary's dtype and shape; in every other case it fails, and its signer is the culprit (the caller
applies the rule only to bytes whose commitment passed H1-H4). Mirrored by the Z3 check
`boundary_rule` (TESTED, exhaustive over small domains).
Core lemmas used: `Bool.and_eq_true`, `decide_eq_true_eq` (simp lemmas of core Lean).
-/
import Verisplit.Spec.Boundary

namespace Verisplit

theorem checkBoundary_none_iff (isTensor : Bool) (facts : Nat × (Nat × Nat)) (finite : Bool)
    (expected : Nat × (Nat × Nat)) :
    checkBoundary isTensor facts finite expected = true ↔
      (isTensor = true ∧ facts = expected ∧ finite = true) := by
  simp only [checkBoundary, Bool.and_eq_true, decide_eq_true_eq]
  constructor
  · intro h
    exact ⟨h.1.1, h.1.2, h.2⟩
  · intro h
    exact ⟨⟨h.1, h.2.1⟩, h.2.2⟩

/-- A low-precision (or otherwise different) dtype never passes, whatever else holds. -/
theorem checkBoundary_rejects_other_dtype (isTensor : Bool) (dtype want : Nat) (shape : Nat × Nat)
    (finite : Bool) (h : dtype ≠ want) :
    checkBoundary isTensor (dtype, shape) finite (want, shape) = false := by
  cases hc : checkBoundary isTensor (dtype, shape) finite (want, shape) with
  | false => rfl
  | true =>
    have hp := (checkBoundary_none_iff isTensor (dtype, shape) finite (want, shape)).mp hc
    exact absurd (congrArg Prod.fst hp.2.1) h

end Verisplit
