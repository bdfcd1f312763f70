/-
Mirror of rule C2 in `spec/cohort.py` (`tiling_conditions`, `tiles_exactly`) and of the layer-range
part of `cohort_violations` (`range_violation_conditions`).

`tilesFrom previousEnd numLayers firsts ends` is the conjunction of `tiling_conditions` from the
running `previous_end` on: each segment starts where the previous one ended and is non-empty, and
after the last one `previous_end == num_layers`. Python requires `len(firsts) == len(ends)` (it
raises `InvalidCohort` otherwise); Lean cannot raise, so its definitions walk both lists together and
stop at the shorter one, and the theorems that need equal lengths take them as a hypothesis.
Layers are `Nat`, so Python's `first < 0` case cannot occur here.
-/
namespace Verisplit

/-- The conjunction of `tiling_conditions(firsts, ends, num_layers)` with `previous_end` given. -/
def tilesFrom (previousEnd numLayers : Nat) : List Nat → List Nat → Prop
  | [], _ => previousEnd = numLayers
  | _ :: _, [] => previousEnd = numLayers
  | a :: fs, b :: es => a = previousEnd ∧ a < b ∧ tilesFrom b numLayers fs es

/-- `tiles_exactly`: at least one segment, and all tiling conditions from `previous_end = 0`. -/
def tilesExactly (firsts ends : List Nat) (numLayers : Nat) : Prop :=
  firsts ≠ [] ∧ tilesFrom 0 numLayers firsts ends

/-- 1 when layer `l` lies in segment `[a, b)`, else 0. -/
def hit (l a b : Nat) : Nat :=
  if a ≤ l ∧ l < b then 1 else 0

/-- How many segments of `zip(firsts, ends)` contain layer `l`. -/
def coverCount (l : Nat) : List Nat → List Nat → Nat
  | [], _ => 0
  | _ :: _, [] => 0
  | a :: fs, b :: es => hit l a b + coverCount l fs es

/-- Segments are listed in order: each is non-empty and starts at or after the previous one's end
(`previousEnd` for the first). -/
def orderedFrom : Nat → List Nat → List Nat → Prop
  | _, [], _ => True
  | _, _ :: _, [] => True
  | p, a :: fs, b :: es => p ≤ a ∧ a < b ∧ orderedFrom b fs es

/-- Python's `ite(end > previous_end, end, previous_end)`: the furthest end so far. -/
def maxEnd (p b : Nat) : Nat :=
  if p < b then b else p

/-- No condition of `range_violation_conditions` holds, from running furthest end `p` on: for each
segment `[a, b)` no `gap` (`a > p`), no `overlap` (`a < p`), no `empty_range` (`b ≤ a`) and no
`out_of_bounds` (`b > L`); after the last one no trailing `gap` (`p < L`). -/
def rangeOkFrom (L : Nat) : Nat → List Nat → List Nat → Prop
  | p, [], _ => ¬ p < L
  | p, _ :: _, [] => ¬ p < L
  | p, a :: fs, b :: es => ¬ p < a ∧ ¬ a < p ∧ ¬ b ≤ a ∧ ¬ L < b ∧ rangeOkFrom L (maxEnd p b) fs es

/-- `cohort_violations` reports no layer-range violation (gap, overlap, empty_range, out_of_bounds). -/
def noRangeViolations (firsts ends : List Nat) (numLayers : Nat) : Prop :=
  rangeOkFrom numLayers 0 firsts ends

end Verisplit
