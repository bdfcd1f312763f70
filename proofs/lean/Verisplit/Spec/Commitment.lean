/-
Mirror of the chain rules in `spec/commitment.py`.

Two models:
- `checkChain` (over `Link`) keeps only rule H3 (`first_broken_link`): link k's input digest must
  equal link k-1's output digest (the first input digest for k = 0); it returns the index of the
  first link that breaks H3 (`some k`) or `none`.
- `checkChainFull` (over `Commit`) is the whole `check_chain`: segment k's commitment is the first
  one claiming segment k (`commitFor`, Python's `commitment_position`); link k is good iff that
  commitment exists, passes H1-H2 and passes H3 (`linkGood`, Python's `first_failing_link`); the
  verdict is the first segment whose link is not good, else `some n` (Python's `extra_commitment`
  at link n) when commitments are left over, else `none` (valid). Signature verification is the
  abstract predicate `sigOk` and the remaining H1-H2 field checks (signer is the assigned key,
  request, step, layers, positions) the abstract predicate `shapeOk k`: nothing about Ed25519 is
  modelled, so theorems hold for every such predicate.
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

/-- What `check_chain` reads of a commitment: the segment it claims and its two digests. -/
structure Commit (D : Type) where
  segmentIndex : Nat
  inputDigest : D
  outputDigest : D

/-- `commitment_position`: the first commitment claiming segment `k` (`none` for Python's -1). -/
def commitFor {D : Type} (k : Nat) : List (Commit D) → Option (Commit D)
  | [] => none
  | c :: cs => if c.segmentIndex = k then some c else commitFor k cs

/-- Rules H1-H3 on link `k` expecting input digest `expected`: the commitment is present, its
signature verifies (`sigOk`), its other fields are right (`shapeOk k`) and H3 holds. -/
def linkGood {D : Type} [DecidableEq D] (sigOk : Commit D → Bool) (shapeOk : Nat → Commit D → Bool)
    (k : Nat) (expected : D) : Option (Commit D) → Bool
  | none => false
  | some c => sigOk c && shapeOk k c && linkRule expected c.inputDigest

/-- The digest link `k + 1` must consume: link `k`'s output (unchanged if link `k` is absent, which
never matters: the verdict is then at `k`). -/
def nextExpected {D : Type} (expected : D) : Option (Commit D) → D
  | none => expected
  | some c => c.outputDigest

/-- The loop of `first_failing_link` over segments `k, ..., k + m - 1`, expecting `expected` at `k`:
the first segment whose link is not good, or `none`. -/
def firstFailing {D : Type} [DecidableEq D] (sigOk : Commit D → Bool) (shapeOk : Nat → Commit D → Bool)
    (cs : List (Commit D)) : D → Nat → Nat → Option Nat
  | _, _, 0 => none
  | e, k, m + 1 =>
    cond (linkGood sigOk shapeOk k e (commitFor k cs))
      (firstFailing sigOk shapeOk cs (nextExpected e (commitFor k cs)) (k + 1) m) (some k)

/-- After the links: valid if every commitment was used (exactly one per segment), else the
`extra_commitment` verdict at link `n`. -/
def finishChain (n len : Nat) : Option Nat → Option Nat
  | some k => some k
  | none => if len = n then none else some n

/-- `check_chain`'s verdict link for a cohort of `n` segments: `some k` for a verdict at link `k`,
`none` for a valid chain. -/
def checkChainFull {D : Type} [DecidableEq D] (sigOk : Commit D → Bool) (shapeOk : Nat → Commit D → Bool)
    (n : Nat) (first : D) (cs : List (Commit D)) : Option Nat :=
  finishChain n cs.length (firstFailing sigOk shapeOk cs first 0 n)

/-- The digest segment `j` must consume: the first input for 0, else the output of segment
`j - 1`'s commitment. -/
def expectedAt {D : Type} (first : D) (cs : List (Commit D)) : Nat → D
  | 0 => first
  | j + 1 => nextExpected (expectedAt first cs j) (commitFor j cs)

/-- Whether segment `j`'s link is good (the rule `check_chain` applies at `j`). -/
def goodAt {D : Type} [DecidableEq D] (sigOk : Commit D → Bool) (shapeOk : Nat → Commit D → Bool)
    (first : D) (cs : List (Commit D)) (j : Nat) : Bool :=
  linkGood sigOk shapeOk j (expectedAt first cs j) (commitFor j cs)

/-- The commitments of an honest step from segment `i` on, `m` of them: segment `i` consumes tensor
`x i`, produces `x (i + 1)`, and claims its own index. -/
def honestFrom {T D : Type} (H : T → D) (x : Nat → T) : Nat → Nat → List (Commit D)
  | _, 0 => []
  | i, m + 1 => Commit.mk i (H (x i)) (H (x (i + 1))) :: honestFrom H x (i + 1) m

end Verisplit
