/-
Chain theorems for chains of any length.
- Rule H3 alone (`checkChain`): an honest chain passes; a substitution after an honest prefix is
  reported at exactly its link (digest injectivity is an explicit hypothesis).
- The whole `check_chain` (`checkChainFull`, signatures as an abstract `sigOk`): the verdict is the
  first segment whose link breaks a rule (absent, `sigOk`/`shapeOk` false, or H3), a leftover
  commitment gives the verdict at link `n`, and an honest step is valid.
Core lemmas relied on: `decide_eq_true`, `decide_eq_false`, `if_pos`, `if_neg`, `Nat.zero_add`,
`Nat.le_refl`, `Nat.zero_le`, `Option.some.inj`; the rest is unfolding of our definitions (`rfl`,
`show`), `rw` with our own lemmas, and `omega`. No `congrArg` on lambdas: every rewrite names its
equation.
-/
import Verisplit.Spec.Commitment

namespace Verisplit

/-- `cond true a b = a` (our own copy, so no core lemma name is relied on). -/
theorem condTrue {α : Type} (a b : α) : cond true a b = a := rfl

/-- `cond false a b = b`. -/
theorem condFalse {α : Type} (a b : α) : cond false a b = b := rfl

/-- A link whose input digest equals the expected one passes. -/
theorem linkRule_self {D : Type} [DecidableEq D] (a : D) : linkRule a a = true := by
  show decide (a = a) = true
  exact decide_eq_true rfl

/-- A link whose input digest differs from the expected one fails. -/
theorem linkRule_ne {D : Type} [DecidableEq D] (a b : D) (h : a ≠ b) : linkRule a b = false := by
  show decide (a = b) = false
  exact decide_eq_false h

/-- An honest chain passes from any starting index. Induction on the outputs: each honest link's
input digest is `H x`, exactly the previous output digest, so `linkRule_self` lets the loop go on. -/
theorem checkChainFrom_honest {T D : Type} [DecidableEq D] (H : T → D) :
    ∀ (outs : List T) (x : T) (k : Nat), checkChainFrom (H x) (honestLinks H x outs) k = none := by
  intro outs
  induction outs with
  | nil =>
    intro x k
    rfl
  | cons y ys ih =>
    intro x k
    have step : checkChainFrom (H x) (honestLinks H x (y :: ys)) k
        = cond (linkRule (H x) (H x)) (checkChainFrom (H y) (honestLinks H y ys) (k + 1)) (some k) :=
      rfl
    rw [step, linkRule_self (H x), condTrue]
    exact ih y (k + 1)

/-- An honest prefix is transparent: checking `honest ++ tail` from index `k` is checking `tail`
from index `k + length`, expecting the digest of the prefix's last output. Induction on the prefix,
as in `checkChainFrom_honest`; `k + 1 + n = k + (n + 1)` by `omega`. -/
theorem checkChainFrom_honest_append {T D : Type} [DecidableEq D] (H : T → D) (tail : List (Link D)) :
    ∀ (pre : List T) (x : T) (k : Nat),
      checkChainFrom (H x) (honestLinks H x pre ++ tail) k
        = checkChainFrom (H (lastOr x pre)) tail (k + pre.length) := by
  intro pre
  induction pre with
  | nil =>
    intro x k
    rfl
  | cons y ys ih =>
    intro x k
    show checkChainFrom (H x) (honestLinks H x (y :: ys) ++ tail) k
        = checkChainFrom (H (lastOr y ys)) tail (k + (y :: ys).length)
    have step : checkChainFrom (H x) (honestLinks H x (y :: ys) ++ tail) k
        = cond (linkRule (H x) (H x)) (checkChainFrom (H y) (honestLinks H y ys ++ tail) (k + 1))
            (some k) :=
      rfl
    have hk : k + 1 + ys.length = k + (y :: ys).length := by
      show k + 1 + ys.length = k + (ys.length + 1)
      omega
    rw [step, linkRule_self (H x), condTrue, ih y (k + 1), hk]

/-- Chain soundness (rule H3), for chains of any length: if the links before `j = pre.length` are
honest and the tensor consumed at link `j` is substituted (`x' ≠` the true input), then, with an
injective digest `H`, `checkChain` reports exactly link `j` (so every earlier link passed).
Argument: the honest prefix passes (`checkChainFrom_honest_append`); at link `j`,
`H (true input) ≠ H x'` by injectivity, so `linkRule_ne` fails there. -/
theorem chain_detects_at {T D : Type} [DecidableEq D] (H : T → D)
    (hInj : ∀ a b, H a = H b → a = b)
    (x0 : T) (pre : List T) (x' : T) (out : D) (rest : List (Link D))
    (hSub : x' ≠ lastOr x0 pre) :
    checkChain (H x0) (honestLinks H x0 pre ++ Link.mk (H x') out :: rest) = some pre.length := by
  have e1 := checkChainFrom_honest_append H (Link.mk (H x') out :: rest) pre x0 0
  have hne : H (lastOr x0 pre) ≠ H x' := fun h => hSub (hInj (lastOr x0 pre) x' h).symm
  have e2 : checkChainFrom (H (lastOr x0 pre)) (Link.mk (H x') out :: rest) (0 + pre.length)
      = cond (linkRule (H (lastOr x0 pre)) (H x')) (checkChainFrom out rest (0 + pre.length + 1))
          (some (0 + pre.length)) :=
    rfl
  show checkChainFrom (H x0) (honestLinks H x0 pre ++ Link.mk (H x') out :: rest) 0 = some pre.length
  rw [e1, e2, linkRule_ne _ _ hne, condFalse, Nat.zero_add]

/-- An unmodified chain passes (`checkChain` returns `none`): `checkChainFrom_honest` at index 0. -/
theorem chain_valid_of_honest {T D : Type} [DecidableEq D] (H : T → D) (x0 : T) (outs : List T) :
    checkChain (H x0) (honestLinks H x0 outs) = none :=
  checkChainFrom_honest H outs x0 0

/-! ## The whole `check_chain` (`checkChainFull`) -/

/-- `commitFor k cs = some c` only for a commitment claiming segment `k`. Induction on `cs`. -/
theorem commitFor_some {D : Type} (k : Nat) :
    ∀ (cs : List (Commit D)) (c : Commit D), commitFor k cs = some c → c.segmentIndex = k := by
  intro cs
  induction cs with
  | nil =>
    intro c h
    have h0 : commitFor k ([] : List (Commit D)) = none := rfl
    rw [h0] at h
    cases h
  | cons d ds ih =>
    intro c h
    by_cases hd : d.segmentIndex = k
    · have hs : commitFor k (d :: ds) = some d := by
        show (if d.segmentIndex = k then some d else commitFor k ds) = some d
        exact if_pos hd
      rw [hs] at h
      have hdc : d = c := Option.some.inj h
      rw [← hdc]
      exact hd
    · have hs : commitFor k (d :: ds) = commitFor k ds := by
        show (if d.segmentIndex = k then some d else commitFor k ds) = commitFor k ds
        exact if_neg hd
      rw [hs] at h
      exact ih c h

/-- `commitFor k cs = none` only if no commitment claims segment `k` (Python's -1). -/
theorem commitFor_none {D : Type} (k : Nat) :
    ∀ (cs : List (Commit D)), commitFor k cs = none → ∀ c, List.Mem c cs → c.segmentIndex ≠ k := by
  intro cs
  induction cs with
  | nil =>
    intro _ c hm
    cases hm
  | cons d ds ih =>
    intro h c hm
    by_cases hd : d.segmentIndex = k
    · have hs : commitFor k (d :: ds) = some d := by
        show (if d.segmentIndex = k then some d else commitFor k ds) = some d
        exact if_pos hd
      rw [hs] at h
      cases h
    · have hs : commitFor k (d :: ds) = commitFor k ds := by
        show (if d.segmentIndex = k then some d else commitFor k ds) = commitFor k ds
        exact if_neg hd
      rw [hs] at h
      cases hm with
      | head => exact hd
      | tail _ hm' => exact ih h c hm'

/-- Soundness of the loop: if `firstFailing` (started at segment `k` with the right expected
digest) returns `some r`, then `r` is in `[k, k + m)`, segment `r`'s link is not good, and every
segment in `[k, r)` is good. Induction on the number `m` of segments left. -/
theorem firstFailing_first {D : Type} [DecidableEq D] (sigOk : Commit D → Bool)
    (shapeOk : Nat → Commit D → Bool) (first : D) (cs : List (Commit D)) :
    ∀ (m k : Nat) (e : D) (r : Nat), e = expectedAt first cs k →
      firstFailing sigOk shapeOk cs e k m = some r →
      k ≤ r ∧ r < k + m ∧ goodAt sigOk shapeOk first cs r = false ∧
        ∀ j, k ≤ j → j < r → goodAt sigOk shapeOk first cs j = true := by
  intro m
  induction m with
  | zero =>
    intro k e r _ h
    have h0 : firstFailing sigOk shapeOk cs e k 0 = none := rfl
    rw [h0] at h
    cases h
  | succ m ih =>
    intro k e r he h
    have hstep : firstFailing sigOk shapeOk cs e k (m + 1)
        = cond (linkGood sigOk shapeOk k e (commitFor k cs))
            (firstFailing sigOk shapeOk cs (nextExpected e (commitFor k cs)) (k + 1) m) (some k) :=
      rfl
    have hgk : goodAt sigOk shapeOk first cs k = linkGood sigOk shapeOk k e (commitFor k cs) := by
      subst he
      rfl
    have he' : nextExpected e (commitFor k cs) = expectedAt first cs (k + 1) := by
      subst he
      rfl
    cases hg : linkGood sigOk shapeOk k e (commitFor k cs) with
    | false =>
      rw [hstep, hg, condFalse] at h
      have hkr : k = r := Option.some.inj h
      rw [← hkr]
      refine ⟨Nat.le_refl k, by omega, ?_, fun j h1 h2 => absurd h2 (by omega)⟩
      rw [hgk, hg]
    | true =>
      rw [hstep, hg, condTrue] at h
      have ⟨h1, h2, h3, h4⟩ := ih (k + 1) (nextExpected e (commitFor k cs)) r he' h
      refine ⟨by omega, by omega, h3, ?_⟩
      intro j hj1 hj2
      by_cases hjk : j = k
      · rw [hjk, hgk, hg]
      · exact h4 j (by omega) hj2

/-- Completeness of the loop, one way: if `firstFailing` returns `none`, every segment in
`[k, k + m)` is good. Induction on `m`. -/
theorem firstFailing_none {D : Type} [DecidableEq D] (sigOk : Commit D → Bool)
    (shapeOk : Nat → Commit D → Bool) (first : D) (cs : List (Commit D)) :
    ∀ (m k : Nat) (e : D), e = expectedAt first cs k →
      firstFailing sigOk shapeOk cs e k m = none →
      ∀ j, k ≤ j → j < k + m → goodAt sigOk shapeOk first cs j = true := by
  intro m
  induction m with
  | zero =>
    intro k e _ _ j h1 h2
    exact absurd h2 (by omega)
  | succ m ih =>
    intro k e he h j hj1 hj2
    have hstep : firstFailing sigOk shapeOk cs e k (m + 1)
        = cond (linkGood sigOk shapeOk k e (commitFor k cs))
            (firstFailing sigOk shapeOk cs (nextExpected e (commitFor k cs)) (k + 1) m) (some k) :=
      rfl
    have hgk : goodAt sigOk shapeOk first cs k = linkGood sigOk shapeOk k e (commitFor k cs) := by
      subst he
      rfl
    have he' : nextExpected e (commitFor k cs) = expectedAt first cs (k + 1) := by
      subst he
      rfl
    cases hg : linkGood sigOk shapeOk k e (commitFor k cs) with
    | false =>
      rw [hstep, hg, condFalse] at h
      cases h
    | true =>
      rw [hstep, hg, condTrue] at h
      by_cases hjk : j = k
      · rw [hjk, hgk, hg]
      · exact ih (k + 1) (nextExpected e (commitFor k cs)) he' h j (by omega) (by omega)

/-- Completeness of the loop, the other way: if every segment in `[k, k + m)` is good,
`firstFailing` returns `none`. Induction on `m`. -/
theorem firstFailing_none_of_good {D : Type} [DecidableEq D] (sigOk : Commit D → Bool)
    (shapeOk : Nat → Commit D → Bool) (first : D) (cs : List (Commit D)) :
    ∀ (m k : Nat) (e : D), e = expectedAt first cs k →
      (∀ j, k ≤ j → j < k + m → goodAt sigOk shapeOk first cs j = true) →
      firstFailing sigOk shapeOk cs e k m = none := by
  intro m
  induction m with
  | zero =>
    intro k e _ _
    rfl
  | succ m ih =>
    intro k e he hgood
    have hstep : firstFailing sigOk shapeOk cs e k (m + 1)
        = cond (linkGood sigOk shapeOk k e (commitFor k cs))
            (firstFailing sigOk shapeOk cs (nextExpected e (commitFor k cs)) (k + 1) m) (some k) :=
      rfl
    have hgk : goodAt sigOk shapeOk first cs k = linkGood sigOk shapeOk k e (commitFor k cs) := by
      subst he
      rfl
    have he' : nextExpected e (commitFor k cs) = expectedAt first cs (k + 1) := by
      subst he
      rfl
    have hk : linkGood sigOk shapeOk k e (commitFor k cs) = true := by
      rw [← hgk]
      exact hgood k (Nat.le_refl k) (by omega)
    rw [hstep, hk, condTrue]
    exact ih (k + 1) (nextExpected e (commitFor k cs)) he' (fun j h1 h2 => hgood j (by omega) (by omega))

/-- The whole `check_chain`, a verdict: `checkChainFull = some r` means `r ≤ n`, every segment
before `r` is good, and either segment `r < n` is not good (the first failing link) or `r = n`
and commitments are left over (`extra_commitment`). -/
theorem checkChainFull_some {D : Type} [DecidableEq D] (sigOk : Commit D → Bool)
    (shapeOk : Nat → Commit D → Bool) (n : Nat) (first : D) (cs : List (Commit D)) (r : Nat)
    (h : checkChainFull sigOk shapeOk n first cs = some r) :
    r ≤ n ∧ (∀ j, j < r → goodAt sigOk shapeOk first cs j = true) ∧
      (r < n → goodAt sigOk shapeOk first cs r = false) ∧ (r = n → cs.length ≠ n) := by
  cases hf : firstFailing sigOk shapeOk cs first 0 n with
  | some k =>
    have h' : finishChain n cs.length (firstFailing sigOk shapeOk cs first 0 n) = some r := h
    rw [hf] at h'
    have hkr : k = r := Option.some.inj h'
    rw [← hkr]
    have ⟨_, h2, h3, h4⟩ := firstFailing_first sigOk shapeOk first cs n 0 first k rfl hf
    exact ⟨by omega, fun j hj => h4 j (Nat.zero_le j) hj, fun _ => h3, fun hkn => absurd hkn (by omega)⟩
  | none =>
    have h' : finishChain n cs.length (firstFailing sigOk shapeOk cs first 0 n) = some r := h
    rw [hf] at h'
    have hgood := firstFailing_none sigOk shapeOk first cs n 0 first rfl hf
    by_cases hlen : cs.length = n
    · have h0 : finishChain n cs.length none = none := by
        show (if cs.length = n then none else some n) = none
        exact if_pos hlen
      rw [h0] at h'
      cases h'
    · have h1 : finishChain n cs.length none = some n := by
        show (if cs.length = n then none else some n) = some n
        exact if_neg hlen
      rw [h1] at h'
      have hnr : n = r := Option.some.inj h'
      rw [← hnr]
      exact ⟨Nat.le_refl n, fun j hj => hgood j (Nat.zero_le j) (by omega),
        fun hlt => absurd hlt (by omega), fun _ => hlen⟩

/-- The whole `check_chain`, valid: `checkChainFull = none` iff every segment is good and there is
exactly one commitment per segment. -/
theorem checkChainFull_none {D : Type} [DecidableEq D] (sigOk : Commit D → Bool)
    (shapeOk : Nat → Commit D → Bool) (n : Nat) (first : D) (cs : List (Commit D)) :
    checkChainFull sigOk shapeOk n first cs = none ↔
      ((∀ j, j < n → goodAt sigOk shapeOk first cs j = true) ∧ cs.length = n) := by
  constructor
  · intro h
    cases hf : firstFailing sigOk shapeOk cs first 0 n with
    | some k =>
      have h' : finishChain n cs.length (firstFailing sigOk shapeOk cs first 0 n) = none := h
      rw [hf] at h'
      have h'' : (some k : Option Nat) = none := h'
      cases h''
    | none =>
      have h' : finishChain n cs.length (firstFailing sigOk shapeOk cs first 0 n) = none := h
      rw [hf] at h'
      have hgood := firstFailing_none sigOk shapeOk first cs n 0 first rfl hf
      by_cases hlen : cs.length = n
      · exact ⟨fun j hj => hgood j (Nat.zero_le j) (by omega), hlen⟩
      · have h1 : finishChain n cs.length none = some n := by
          show (if cs.length = n then none else some n) = some n
          exact if_neg hlen
        rw [h1] at h'
        cases h'
  · intro h
    have ⟨hgood, hlen⟩ := h
    have hf := firstFailing_none_of_good sigOk shapeOk first cs n 0 first rfl
      (fun j _ hj => hgood j (by omega))
    show finishChain n cs.length (firstFailing sigOk shapeOk cs first 0 n) = none
    rw [hf]
    show (if cs.length = n then none else some n) = none
    exact if_pos hlen

/-- An honest step has `m` commitments. -/
theorem honestFrom_length {T D : Type} (H : T → D) (x : Nat → T) :
    ∀ (m i : Nat), (honestFrom H x i m).length = m := by
  intro m
  induction m with
  | zero =>
    intro i
    rfl
  | succ m ih =>
    intro i
    have e : (honestFrom H x i (m + 1)).length = (honestFrom H x (i + 1) m).length + 1 := rfl
    have e2 := ih (i + 1)
    omega

/-- In an honest step, segment `j`'s commitment is the honest one. Induction on `m`. -/
theorem commitFor_honest {T D : Type} (H : T → D) (x : Nat → T) :
    ∀ (m i j : Nat), i ≤ j → j < i + m →
      commitFor j (honestFrom H x i m) = some (Commit.mk j (H (x j)) (H (x (j + 1)))) := by
  intro m
  induction m with
  | zero =>
    intro i j h1 h2
    exact absurd h2 (by omega)
  | succ m ih =>
    intro i j h1 h2
    show (if i = j then some (Commit.mk i (H (x i)) (H (x (i + 1))))
        else commitFor j (honestFrom H x (i + 1) m)) = some (Commit.mk j (H (x j)) (H (x (j + 1))))
    by_cases hij : i = j
    · rw [if_pos hij, hij]
    · rw [if_neg hij]
      exact ih (i + 1) j (by omega) (by omega)

/-- In an honest step, segment `j` expects the digest of tensor `x j`. Induction on `j`. -/
theorem expectedAt_honest {T D : Type} (H : T → D) (x : Nat → T) (n : Nat) :
    ∀ j, j ≤ n → expectedAt (H (x 0)) (honestFrom H x 0 n) j = H (x j) := by
  intro j
  induction j with
  | zero =>
    intro _
    rfl
  | succ j ih =>
    intro hj
    have hc := commitFor_honest H x n 0 j (Nat.zero_le j) (by omega)
    have e : expectedAt (H (x 0)) (honestFrom H x 0 n) (j + 1)
        = nextExpected (expectedAt (H (x 0)) (honestFrom H x 0 n) j) (commitFor j (honestFrom H x 0 n)) :=
      rfl
    have e2 : nextExpected (H (x j)) (some (Commit.mk j (H (x j)) (H (x (j + 1))))) = H (x (j + 1)) := rfl
    rw [e, hc, ih (by omega), e2]

/-- `a && b && c = true` from its three parts. -/
theorem and3_true {a b c : Bool} (ha : a = true) (hb : b = true) (hc : c = true) : (a && b && c) = true := by
  subst ha
  subst hb
  subst hc
  rfl

/-- An honest step is valid: if every honest commitment passes the signature check (`sigOk`) and the
other H1-H2 checks (`shapeOk`), `checkChainFull` returns `none`, for any number `n` of segments. -/
theorem checkChainFull_honest {T D : Type} [DecidableEq D] (sigOk : Commit D → Bool)
    (shapeOk : Nat → Commit D → Bool) (H : T → D) (x : Nat → T) (n : Nat)
    (hSig : ∀ j, j < n → sigOk (Commit.mk j (H (x j)) (H (x (j + 1)))) = true)
    (hShape : ∀ j, j < n → shapeOk j (Commit.mk j (H (x j)) (H (x (j + 1)))) = true) :
    checkChainFull sigOk shapeOk n (H (x 0)) (honestFrom H x 0 n) = none := by
  have hgood : ∀ j, j < n → goodAt sigOk shapeOk (H (x 0)) (honestFrom H x 0 n) j = true := by
    intro j hj
    have hc := commitFor_honest H x n 0 j (Nat.zero_le j) (by omega)
    have he := expectedAt_honest H x n j (by omega)
    have e : goodAt sigOk shapeOk (H (x 0)) (honestFrom H x 0 n) j
        = linkGood sigOk shapeOk j (expectedAt (H (x 0)) (honestFrom H x 0 n) j)
            (commitFor j (honestFrom H x 0 n)) :=
      rfl
    have e2 : linkGood sigOk shapeOk j (H (x j)) (some (Commit.mk j (H (x j)) (H (x (j + 1)))))
        = (sigOk (Commit.mk j (H (x j)) (H (x (j + 1)))) && shapeOk j (Commit.mk j (H (x j)) (H (x (j + 1))))
            && linkRule (H (x j)) (H (x j))) :=
      rfl
    rw [e, hc, he, e2]
    exact and3_true (hSig j hj) (hShape j hj) (linkRule_self (H (x j)))
  exact (checkChainFull_none sigOk shapeOk n (H (x 0)) (honestFrom H x 0 n)).mpr
    ⟨hgood, honestFrom_length H x n 0⟩

end Verisplit
