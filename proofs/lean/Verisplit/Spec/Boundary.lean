/-
Mirror of `spec/commitment.py: check_boundary` (rule H5). Python returns `None` (passes) or
`(bad_boundary, detail)`; here `checkBoundary` returns `true` for a pass. Dtypes are coded as `Nat`
(any injective coding of the dtype names), a shape is `(positions, width)`, and `isTensor` says the
received bytes decoded as a canonical tensor at all.
-/
namespace Verisplit

/-- `check_boundary`: the signed output passes iff it is a canonical tensor whose (dtype, shape) is
exactly the expected one and whose every element is finite. -/
def checkBoundary (isTensor : Bool) (facts : Nat × (Nat × Nat)) (finite : Bool)
    (expected : Nat × (Nat × Nat)) : Bool :=
  isTensor && decide (facts = expected) && finite

end Verisplit
