/-
Mirror of the direct data path's equivocation rule (`spec/commitment.py` `check_equivocation`). A
commitment is abstracted to what the rule compares: its slot (every field but the digests and the
signature: request, step, segment, layers, positions, weights, dtype, seed commitment), its signer, its
output digest, and whether its signature verifies (Ed25519 is not modelled: `sigOk` is abstract).
-/

namespace Verisplit

/-- A signed boundary statement, abstracted for the equivocation rule. -/
structure Stmt where
  slot : Nat
  signer : Nat
  output : Nat
  sigOk : Bool

/-- `check_equivocation(previous, upstream)` returns `equivocation`: one signer, one slot, two
different outputs, both signatures valid. -/
def Equivocation (p u : Stmt) : Prop :=
  p.slot = u.slot ∧ p.signer = u.signer ∧ p.output ≠ u.output ∧ p.sigOk = true ∧ u.sigOk = true

end Verisplit
