/-
Mirror of rule K1 (`spec/commitment.py` `step_follows`, used by `next_step_context`) and of the plain
decoding steps of rule F1 (`spec/settlement.py` `plain_decoding_steps`, summed by
`billable_positions`). Positions are natural numbers (the spec rejects negative ones).
-/
import Verisplit.Spec.Settlement

namespace Verisplit

/-- Rule K1, `step_follows`: a step may start anywhere in `(prevFirst, prevFirst + prevN]`. -/
def stepFollows (prevFirst prevN first : Nat) : Prop :=
  prevFirst < first ∧ first ≤ prevFirst + prevN

/-- `plain_decoding_steps(prompt, completion)`: `[prompt] + [1] * (completion - 1)`. -/
def plainSteps (prompt completion : Nat) : List Nat :=
  prompt :: List.replicate (completion - 1) 1

end Verisplit
