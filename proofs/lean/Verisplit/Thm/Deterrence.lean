/-
Deterrence theorems (rules D1, D2) over `Int`. Proofs unfold the mirror definitions with `show`
and close linear goals with `omega` (the product `p * franchise` is one atom to it).
-/
import Verisplit.Spec.Deterrence

namespace Verisplit

/-- Rule D1 (deterrence corollary): if the expected loss `p * F` covers the whole model's cost `C`,
and a shard saves `s ≤ C_k ≤ C`, then the shard's margin `p * F - s` is non-negative.
Argument: `p * F ≥ C ≥ C_k ≥ s`. -/
theorem shard_deterred_of_whole (p franchise wholeCost shardSavings shardCost : Int)
    (hWhole : wholeCost ≤ p * franchise) (hSave : shardSavings ≤ shardCost)
    (hShard : shardCost ≤ wholeCost) :
    0 ≤ deterrenceMargin p franchise shardSavings := by
  show 0 ≤ p * franchise - shardSavings
  omega

/-- `is_deterred` form of rule D1. -/
theorem shard_isDeterred_of_whole (p franchise wholeCost shardSavings shardCost : Int)
    (hWhole : wholeCost ≤ p * franchise) (hSave : shardSavings ≤ shardCost)
    (hShard : shardCost ≤ wholeCost) :
    isDeterred p franchise shardSavings :=
  shard_deterred_of_whole p franchise wholeCost shardSavings shardCost hWhole hSave hShard

/-- `shard_deterred_given_whole`'s own premises imply its own conclusion (what the Z3 check
`deterrence_corollary` proves on the same expression). Argument: linear, `omega`. -/
theorem shardDeterredGivenWhole_valid (expectedLoss wholeCost shardSavings shardCost : Int) :
    (shardDeterredGivenWhole expectedLoss wholeCost shardSavings shardCost).1 →
      (shardDeterredGivenWhole expectedLoss wholeCost shardSavings shardCost).2 := by
  intro h
  have h' : wholeCost ≤ expectedLoss ∧ 0 ≤ shardSavings ∧ shardSavings ≤ shardCost
      ∧ shardCost ≤ wholeCost := h
  show 0 ≤ expectedLoss - shardSavings
  omega

/-- Rule D2: when a shard can save its whole cost (`savings = cost`), a smaller shard
(`C_i < C_j`) has a strictly larger margin. Argument: `p * F - C_j < p * F - C_i`. -/
theorem smaller_shard_larger_margin (p franchise costI costJ : Int) (h : costI < costJ) :
    deterrenceMargin p franchise costJ < deterrenceMargin p franchise costI := by
  show p * franchise - costJ < p * franchise - costI
  omega

end Verisplit
