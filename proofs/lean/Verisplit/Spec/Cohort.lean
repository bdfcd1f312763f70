/-
Mirror of rule C2 in `spec/cohort.py` (`tiling_conditions`, `tiles_exactly`).

`tilesFrom previousEnd numLayers firsts ends` is the conjunction of `tiling_conditions` from the
running `previous_end` on: each segment (zipped, like Python's `zip`) starts where the previous one
ended and is non-empty, and after the last one `previous_end == num_layers`.
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

end Verisplit
