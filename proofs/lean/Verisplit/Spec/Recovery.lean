/-
Recovery rules R1-R3 (`verisplit.spec.recovery`): the replacement's range condition (C1), the
positions a replay covers, and the fee of a recovered request (the total value served).
-/
namespace Verisplit

/-- Rule R1's range condition: `[f, e)` lies inside the offer's `[of, oe)`. -/
def covers (of oe f e : Nat) : Prop := of ≤ f ∧ e ≤ oe

/-- The sum of a list of naturals (positions of the replayed steps; values of a recovered request). -/
def sumList : List Nat → Nat
  | [] => 0
  | x :: xs => x + sumList xs

end Verisplit
