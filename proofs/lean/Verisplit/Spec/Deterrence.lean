/-
Mirror of `spec/deterrence.py` (`margin_from_expected_loss`, `deterrence_margin`, `is_deterred`,
`shard_deterred_given_whole`).

Python evaluates these on ints, Fractions or Z3 terms. Core Lean has no rationals, so the mirror is
over `Int`. Every statement proved about them is a homogeneous linear inequality, so a rational
instance follows by multiplying every quantity by a common positive denominator.
-/
namespace Verisplit

/-- `margin_from_expected_loss`: `expected_loss - savings`; `≥ 0` means cheating does not pay. -/
def marginFromExpectedLoss (expectedLoss savings : Int) : Int :=
  expectedLoss - savings

/-- `deterrence_margin`: `p * franchise - savings`. -/
def deterrenceMargin (p franchise savings : Int) : Int :=
  marginFromExpectedLoss (p * franchise) savings

/-- `is_deterred`: the margin is non-negative. -/
def isDeterred (p franchise savings : Int) : Prop :=
  0 ≤ deterrenceMargin p franchise savings

/-- `shard_deterred_given_whole`: (premises, conclusion) of rule D1. -/
def shardDeterredGivenWhole (expectedLoss wholeCost shardSavings shardCost : Int) : Prop × Prop :=
  (wholeCost ≤ expectedLoss ∧ 0 ≤ shardSavings ∧ shardSavings ≤ shardCost ∧ shardCost ≤ wholeCost,
   0 ≤ marginFromExpectedLoss expectedLoss shardSavings)

end Verisplit
