/-
Mirror of the chain rule H3 in `spec/commitment.py` (`link_rule`, `check_chain`).

The Lean model keeps what rule H3 decides: link k's input digest must equal link k-1's output
digest (the first input digest for k = 0). Signatures, signer, request and range checks (H1, H2)
are assumed to pass here; they are checked by the Python spec and its tests. `checkChain` returns
the index of the first link that breaks H3 (`some k`) or `none` for a valid chain, like the
`link` field of Python's `ChainVerdict`.
-/
namespace Verisplit

/-- The two digests of one boundary commitment. -/
structure Link (D : Type) where
  inputDigest : D
  outputDigest : D

/-- `link_rule(previous_output, this_input)`: the digests are equal. -/
def linkRule {D : Type} [DecidableEq D] (previousOutput thisInput : D) : Bool :=
  decide (previousOutput = thisInput)

/-- The loop of `check_chain` from link index `k`, expecting input digest `expected`. -/
def checkChainFrom {D : Type} [DecidableEq D] (expected : D) : List (Link D) → Nat → Option Nat
  | [], _ => none
  | c :: cs, k => cond (linkRule expected c.inputDigest) (checkChainFrom c.outputDigest cs (k + 1)) (some k)

/-- `check_chain` (rule H3 part): the first bad link index, or `none` when every link passes. -/
def checkChain {D : Type} [DecidableEq D] (firstInputDigest : D) (links : List (Link D)) : Option Nat :=
  checkChainFrom firstInputDigest links 0

/-- The commitments of an honest run: link k consumes tensor `x_k` and produces `x_{k+1}`, and
commits to their digests under `H`. `outs` lists each link's output tensor. -/
def honestLinks {T D : Type} (H : T → D) : T → List T → List (Link D)
  | _, [] => []
  | x, y :: ys => Link.mk (H x) (H y) :: honestLinks H y ys

/-- The tensor flowing out of the last link of `outs` (or `x` when there is none). -/
def lastOr {T : Type} : T → List T → T
  | x, [] => x
  | _, y :: ys => lastOr y ys

end Verisplit
