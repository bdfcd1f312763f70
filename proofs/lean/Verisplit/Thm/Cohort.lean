/-
Tiling characterisation (rule C2) and `cohort_violations`' layer-range rules, for segment lists of
any length. Core lemmas relied on: `if_pos`, `if_neg`, `Nat.le_refl`, `Nat.zero_le`,
`List.noConfusion`; the rest is unfolding (`rfl`, `show`, with numerals typed as `Nat`) and `omega`.
-/
import Verisplit.Spec.Cohort

namespace Verisplit

/-- A layer inside `[a, b)` is hit once. -/
theorem hit_one {l a b : Nat} (h1 : a ≤ l) (h2 : l < b) : hit l a b = 1 := by
  show (if a ≤ l ∧ l < b then (1 : Nat) else (0 : Nat)) = (1 : Nat)
  exact if_pos ⟨h1, h2⟩

/-- A layer below `a` is not hit by `[a, b)`. -/
theorem hit_zero_below {l a b : Nat} (h : l < a) : hit l a b = 0 := by
  show (if a ≤ l ∧ l < b then (1 : Nat) else (0 : Nat)) = (0 : Nat)
  exact if_neg (fun hc : a ≤ l ∧ l < b => Nat.lt_irrefl l (Nat.lt_of_lt_of_le h hc.1))

/-- A layer at or above `b` is not hit by `[a, b)`. -/
theorem hit_zero_above {l a b : Nat} (h : b ≤ l) : hit l a b = 0 := by
  show (if a ≤ l ∧ l < b then (1 : Nat) else (0 : Nat)) = (0 : Nat)
  exact if_neg (fun hc : a ≤ l ∧ l < b => Nat.lt_irrefl l (Nat.lt_of_lt_of_le hc.2 h))

/-- Ordered segments starting at or after `p` cover no layer below `p`. Induction on the list. -/
theorem ordered_below :
    ∀ (fs es : List Nat) (p : Nat), orderedFrom p fs es → ∀ l, l < p → coverCount l fs es = 0 := by
  intro fs
  induction fs with
  | nil =>
    intro es p _ l _
    rfl
  | cons a fs ih =>
    intro es p h l hl
    cases es with
    | nil => rfl
    | cons b es =>
      have h' : p ≤ a ∧ a < b ∧ orderedFrom b fs es := h
      have e1 := ih es b h'.2.2 l (by omega)
      have e2 := hit_zero_below (l := l) (a := a) (b := b) (by omega)
      show hit l a b + coverCount l fs es = 0
      omega

/-- An exact tiling is ordered: each segment starts at the previous end and is non-empty. -/
theorem ordered_of_tiles (L : Nat) :
    ∀ (fs es : List Nat) (p : Nat), tilesFrom p L fs es → orderedFrom p fs es := by
  intro fs
  induction fs with
  | nil =>
    intro es p _
    exact True.intro
  | cons a fs ih =>
    intro es p h
    cases es with
    | nil => exact True.intro
    | cons b es =>
      have h' : a = p ∧ a < b ∧ tilesFrom b L fs es := h
      have hr := ih es b h'.2.2
      show p ≤ a ∧ a < b ∧ orderedFrom b fs es
      exact ⟨by omega, h'.2.1, hr⟩

/-- Soundness of the tiling conditions from `p`: `p ≤ L`, no layer below `p` is covered, every
layer in `[p, L)` is covered exactly once, and no layer at or above `L` is covered. Induction on
the segments: segment `[p, b)` hits exactly the layers in it; the rest tiles `[b, L)` (IH). -/
theorem tilesFrom_sound (L : Nat) :
    ∀ (fs es : List Nat) (p : Nat), tilesFrom p L fs es →
      p ≤ L ∧ (∀ l, l < p → coverCount l fs es = 0) ∧
      (∀ l, p ≤ l → l < L → coverCount l fs es = 1) ∧ (∀ l, L ≤ l → coverCount l fs es = 0) := by
  intro fs
  induction fs with
  | nil =>
    intro es p h
    have hp : p = L := h
    refine ⟨by omega, fun _ _ => rfl, fun _ h1 h2 => by omega, fun _ _ => rfl⟩
  | cons a fs ih =>
    intro es p h
    cases es with
    | nil =>
      have hp : p = L := h
      refine ⟨by omega, fun _ _ => rfl, fun _ h1 h2 => by omega, fun _ _ => rfl⟩
    | cons b es =>
      have h' : a = p ∧ a < b ∧ tilesFrom b L fs es := h
      have ⟨hbL, hlow, hmid, hhigh⟩ := ih es b h'.2.2
      have hc : ∀ l, coverCount l (a :: fs) (b :: es) = hit l a b + coverCount l fs es :=
        fun _ => rfl
      refine ⟨by omega, ?_, ?_, ?_⟩
      · intro l hl
        have e1 := hc l
        have e2 := hit_zero_below (l := l) (a := a) (b := b) (by omega)
        have e3 := hlow l (by omega)
        omega
      · intro l h1 h2
        have e1 := hc l
        by_cases hlb : l < b
        · have e2 := hit_one (l := l) (a := a) (b := b) (by omega) hlb
          have e3 := hlow l hlb
          omega
        · have e2 := hit_zero_above (l := l) (a := a) (b := b) (by omega)
          have e3 := hmid l (by omega) h2
          omega
      · intro l hl
        have e1 := hc l
        have e2 := hit_zero_above (l := l) (a := a) (b := b) (by omega)
        have e3 := hhigh l hl
        omega

/-- Completeness: ordered segments from `p ≤ L` that cover every layer of `[p, L)` exactly once and
nothing at or above `L` satisfy the tiling conditions from `p`. Induction on the segments: the
first must start at `p` (else layer `p`, or layer `a ≥ L`, is covered wrongly), must end at or
below `L` (else layer `b - 1 ≥ L` is covered), and the rest then covers `[b, L)` exactly (IH). -/
theorem tilesFrom_complete (L : Nat) :
    ∀ (fs es : List Nat) (p : Nat), orderedFrom p fs es → p ≤ L →
      (∀ l, p ≤ l → l < L → coverCount l fs es = 1) → (∀ l, L ≤ l → coverCount l fs es = 0) →
      tilesFrom p L fs es := by
  intro fs
  induction fs with
  | nil =>
    intro es p _ hpL hmid _
    show p = L
    by_cases hlt : p < L
    · have h1 : coverCount p [] es = 1 := hmid p (Nat.le_refl p) hlt
      have h0 : coverCount p [] es = 0 := rfl
      omega
    · omega
  | cons a fs ih =>
    intro es p hord hpL hmid hhigh
    cases es with
    | nil =>
      show p = L
      by_cases hlt : p < L
      · have h1 : coverCount p (a :: fs) [] = 1 := hmid p (Nat.le_refl p) hlt
        have h0 : coverCount p (a :: fs) [] = 0 := rfl
        omega
      · omega
    | cons b es =>
      have hord' : p ≤ a ∧ a < b ∧ orderedFrom b fs es := hord
      have hc : ∀ l, coverCount l (a :: fs) (b :: es) = hit l a b + coverCount l fs es :=
        fun _ => rfl
      have hbelow := ordered_below fs es b hord'.2.2
      have hap : a = p := by
        by_cases hlt : p < L
        · by_cases hgt : p < a
          · have e1 := hmid p (Nat.le_refl p) hlt
            have e2 := hc p
            have e3 := hit_zero_below (l := p) (a := a) (b := b) hgt
            have e4 := hbelow p (by omega)
            omega
          · omega
        · have e1 := hhigh a (by omega)
          have e2 := hc a
          have e3 := hit_one (l := a) (a := a) (b := b) (Nat.le_refl a) hord'.2.1
          omega
      have hbL : b ≤ L := by
        by_cases hbl : b ≤ L
        · exact hbl
        · have e1 := hhigh (b - 1) (by omega)
          have e2 := hc (b - 1)
          have e3 := hit_one (l := b - 1) (a := a) (b := b) (by omega) (by omega)
          omega
      have hrest : tilesFrom b L fs es := ih es b hord'.2.2 hbL
        (fun l h1 h2 => by
          have e1 := hmid l (by omega) h2
          have e2 := hc l
          have e3 := hit_zero_above (l := l) (a := a) (b := b) h1
          omega)
        (fun l h1 => by
          have e1 := hhigh l h1
          have e2 := hc l
          omega)
      show a = p ∧ a < b ∧ tilesFrom b L fs es
      exact ⟨hap, hord'.2.1, hrest⟩

/-- With equal lengths (as Python requires), a non-empty `firsts` means a non-empty `ends`. -/
theorem ne_nil_of_length_eq {fs es : List Nat} (hlen : fs.length = es.length) (h : fs ≠ []) : es ≠ [] := by
  intro he
  cases fs with
  | nil => exact h rfl
  | cons a fs =>
    rw [he] at hlen
    have h0 : fs.length + 1 = 0 := hlen
    omega

/-- Tiling characterisation (rule C2), for any number of segments given as equal-length `firsts`
and `ends` (Python's `tiles_exactly` raises on unequal lengths): `tiles_exactly` holds iff there is
at least one segment (`firsts` and `ends` both non-empty), the segments are listed in order (each
non-empty, starting at or after the previous end), every layer `l < L` lies in exactly one segment,
and no layer `l ≥ L` lies in any. Argument: `tilesFrom_sound` and `ordered_of_tiles` one way,
`tilesFrom_complete` the other, all from `p = 0`; `ne_nil_of_length_eq` for `ends ≠ []`. -/
theorem tiles_iff_coverage (firsts ends : List Nat) (numLayers : Nat) (hlen : firsts.length = ends.length) :
    tilesExactly firsts ends numLayers ↔
      (firsts ≠ [] ∧ ends ≠ [] ∧ orderedFrom 0 firsts ends ∧
        (∀ l, l < numLayers → coverCount l firsts ends = 1) ∧
        (∀ l, numLayers ≤ l → coverCount l firsts ends = 0)) := by
  constructor
  · intro h
    have h' : firsts ≠ [] ∧ tilesFrom 0 numLayers firsts ends := h
    have ⟨hne, ht⟩ := h'
    have ⟨_, _, hmid, hhigh⟩ := tilesFrom_sound numLayers firsts ends 0 ht
    exact ⟨hne, ne_nil_of_length_eq hlen hne, ordered_of_tiles numLayers firsts ends 0 ht,
      fun l hl => hmid l (Nat.zero_le l) hl, hhigh⟩
  · intro h
    have ⟨hne, _, hord, hmid, hhigh⟩ := h
    show firsts ≠ [] ∧ tilesFrom 0 numLayers firsts ends
    exact ⟨hne, tilesFrom_complete numLayers firsts ends 0 hord (Nat.zero_le numLayers)
      (fun l _ hl => hmid l hl) hhigh⟩

/-- `maxEnd p b = b` when the segment ends beyond the furthest end so far. -/
theorem maxEnd_of_lt {p b : Nat} (h : p < b) : maxEnd p b = b := by
  show (if p < b then b else p) = b
  exact if_pos h

/-- From a running end `p ≤ L`, no layer-range violation is reported iff the tiling conditions hold.
Induction on the segments: no gap and no overlap force `a = p`, not empty forces `a < b` (so
`maxEnd p b = b`), and not out of bounds is `b ≤ L`, which the tiling conditions imply through
`tilesFrom_sound`; the rest is the induction hypothesis from `b`. -/
theorem rangeOk_iff_tilesFrom (L : Nat) :
    ∀ (fs es : List Nat) (p : Nat), p ≤ L → (rangeOkFrom L p fs es ↔ tilesFrom p L fs es) := by
  intro fs
  induction fs with
  | nil =>
    intro es p hp
    show ¬ p < L ↔ p = L
    constructor
    · intro h
      omega
    · intro h
      omega
  | cons a fs ih =>
    intro es p hp
    cases es with
    | nil =>
      show ¬ p < L ↔ p = L
      constructor
      · intro h
        omega
      · intro h
        omega
    | cons b es =>
      show (¬ p < a ∧ ¬ a < p ∧ ¬ b ≤ a ∧ ¬ L < b ∧ rangeOkFrom L (maxEnd p b) fs es) ↔
        (a = p ∧ a < b ∧ tilesFrom b L fs es)
      constructor
      · intro h
        have ⟨h1, h2, h3, h4, h5⟩ := h
        have hm : maxEnd p b = b := maxEnd_of_lt (by omega)
        rw [hm] at h5
        exact ⟨by omega, by omega, (ih es b (by omega)).mp h5⟩
      · intro h
        have ⟨h1, h2, h3⟩ := h
        have hbL : b ≤ L := (tilesFrom_sound L fs es b h3).1
        have hm : maxEnd p b = b := maxEnd_of_lt (by omega)
        rw [hm]
        exact ⟨by omega, by omega, by omega, by omega, (ih es b hbL).mpr h3⟩

/-- `cohort_violations` reports no layer-range violation iff `tiles_exactly` holds (for a model of
`numLayers ≥ 1` layers, as `ModelSpec` requires), for any number of segments. With no segment the
trailing gap `[0, L)` is reported and there is no tiling; otherwise `rangeOk_iff_tilesFrom` from 0. -/
theorem noRangeViolations_iff_tiles (firsts ends : List Nat) (numLayers : Nat) (hL : 1 ≤ numLayers) :
    noRangeViolations firsts ends numLayers ↔ tilesExactly firsts ends numLayers := by
  cases firsts with
  | nil =>
    show ¬ 0 < numLayers ↔ (([] : List Nat) ≠ [] ∧ tilesFrom 0 numLayers [] ends)
    constructor
    · intro h
      exact (h (by omega)).elim
    · intro h
      exact (h.1 rfl).elim
  | cons a fs =>
    have hne : (a :: fs) ≠ [] := fun h => List.noConfusion h
    have hiff := rangeOk_iff_tilesFrom numLayers (a :: fs) ends 0 (Nat.zero_le numLayers)
    constructor
    · intro h
      exact ⟨hne, hiff.mp h⟩
    · intro h
      exact hiff.mpr h.2

end Verisplit
