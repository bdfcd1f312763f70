/-
Rollback (rule K1) and billing (rule F1) theorems, for all naturals: plain continuation follows,
K1 makes progress without a gap, two K1 steps keep strictly increasing starts, and the plain decoding
steps sum to `prompt + completion - 1`.

Lemmas relied on from core: none beyond unfolding our definitions (`show`, `rfl`), structural
induction on `Nat`, and linear arithmetic (`omega`).
-/
import Verisplit.Spec.Rollback

namespace Verisplit

/-- K1 implies progress (start after the previous start) and no gap (start at most the previous end). -/
theorem stepFollows_progress (f n s : Nat) (h : stepFollows f n s) : f < s ∧ s ≤ f + n := h

/-- Plain decoding (start where the previous step ended) satisfies K1 for any step of >= 1 position. -/
theorem nextStart_follows (f n : Nat) (hn : 1 ≤ n) : stepFollows f n (f + n) := by
  show f < f + n ∧ f + n ≤ f + n
  omega

/-- Starts strictly increase over two K1 steps, so a later step never rewrites an earlier step's context. -/
theorem stepFollows_trans_lt (a na b nb c : Nat) (h1 : stepFollows a na b) (h2 : stepFollows b nb c) : a < c := by
  have p1 := h1.1
  have p2 := h2.1
  omega

/-- The sum of `k` ones is `k`. -/
theorem sum_replicate_one (k : Nat) : sumList (List.replicate k 1) = k := by
  induction k with
  | zero => rfl
  | succ k ih =>
    show 1 + sumList (List.replicate k 1) = k + 1
    omega

/-- F1 without explicit steps: the plain decoding steps sum to `prompt + completion - 1`. -/
theorem billable_plain (prompt completion : Nat) (hc : 1 ≤ completion) :
    sumList (plainSteps prompt completion) = prompt + completion - 1 := by
  show prompt + sumList (List.replicate (completion - 1) 1) = prompt + completion - 1
  have h := sum_replicate_one (completion - 1)
  omega

end Verisplit
