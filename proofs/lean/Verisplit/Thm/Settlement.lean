/-
Settlement theorems for all N (lists of any length), over generic natural weights (so in particular
the values `price * work` that `settle` passes): conservation (S4), residual bound (S3), forfeit
isolation (S2, S5), and a fee equal to the sum of the weights (the quote) paying every provider
exactly its weight with residual 0 (issue 19), plus the value/quote identities.

Lemmas relied on from core: `Nat.mod_add_div`, `Nat.mod_lt`, `Nat.left_distrib`, `Nat.mul_comm`,
`Nat.mul_le_mul` (monotonicity, used with `Nat.le_refl`), `Nat.mul_div_cancel_left`, `Nat.mul_assoc`,
`Nat.le_refl`; everything else is unfolding of our own definitions (`rfl`, `show`), `cases` on
equalities of `Option` constructors, `subst`, `rw` with the lemmas above, and linear arithmetic
(`omega`, which treats products and divisions of variables as atoms).
-/
import Verisplit.Spec.Settlement

namespace Verisplit

/-- Sum of all slices over `ws` alone (no flags): `sum(fee * w_i // W)`. -/
def sliceSum (fee totalWork : Nat) : List Nat → Nat
  | [] => 0
  | w :: ws => providerSlice fee w totalWork + sliceSum fee totalWork ws

/-- Sum of the division remainders `sum(fee * w_i % W)`. -/
def remSum (fee totalWork : Nat) : List Nat → Nat
  | [] => 0
  | w :: ws => fee * w % totalWork + remSum fee totalWork ws

/-- A flagged pair splits the slice: `cond f 0 p + cond f p 0 = p` (case on `f`). -/
theorem cond_split (f : Bool) (p : Nat) : cond f 0 p + cond f p 0 = p := by
  cases f with
  | false =>
    show p + 0 = p
    omega
  | true =>
    show 0 + p = p
    omega

/-- Payouts plus refund equal the paid slices, for any flags. Induction on the weights; each step
is `cond_split`. -/
theorem payouts_add_refund (fee W : Nat) :
    ∀ (ws : List Nat) (fs : List Bool),
      sumList (payoutsOf fee W ws fs) + refundOf fee W ws fs = paidSlicesOf fee W ws fs := by
  intro ws
  induction ws with
  | nil =>
    intro fs
    rfl
  | cons w ws ih =>
    intro fs
    cases fs with
    | nil => rfl
    | cons f fs =>
      show (cond f 0 (providerSlice fee w W) + sumList (payoutsOf fee W ws fs))
          + (cond f (providerSlice fee w W) 0 + refundOf fee W ws fs)
          = providerSlice fee w W + paidSlicesOf fee W ws fs
      have hs := cond_split f (providerSlice fee w W)
      have hi := ih fs
      omega

/-- Paid slices over the zip never exceed the slices of all weights (the zip is a prefix). -/
theorem paid_le_sliceSum (fee W : Nat) :
    ∀ (ws : List Nat) (fs : List Bool), paidSlicesOf fee W ws fs ≤ sliceSum fee W ws := by
  intro ws
  induction ws with
  | nil =>
    intro fs
    exact Nat.le_refl 0
  | cons w ws ih =>
    intro fs
    cases fs with
    | nil =>
      show 0 ≤ providerSlice fee w W + sliceSum fee W ws
      omega
    | cons _ fs =>
      have hi := ih fs
      show providerSlice fee w W + paidSlicesOf fee W ws fs ≤ providerSlice fee w W + sliceSum fee W ws
      omega

/-- With one flag per work, the zip covers every work, so paid slices are all slices. -/
theorem paid_eq_sliceSum (fee W : Nat) :
    ∀ (ws : List Nat) (fs : List Bool),
      ws.length = fs.length → paidSlicesOf fee W ws fs = sliceSum fee W ws := by
  intro ws
  induction ws with
  | nil =>
    intro fs _
    rfl
  | cons w ws ih =>
    intro fs hlen
    cases fs with
    | nil =>
      have h0 : ws.length + 1 = 0 := hlen
      omega
    | cons _ fs =>
      have h1 : ws.length + 1 = fs.length + 1 := hlen
      have hi := ih fs (by omega)
      show providerSlice fee w W + paidSlicesOf fee W ws fs = providerSlice fee w W + sliceSum fee W ws
      omega

/-- Summed division identity: `W * sum(q_i) + sum(r_i) = fee * sum(w_i)`, from
`r_i + W * q_i = fee * w_i` (`Nat.mod_add_div`) and distributivity (`Nat.left_distrib`). -/
theorem div_sum (fee W : Nat) :
    ∀ ws : List Nat, W * sliceSum fee W ws + remSum fee W ws = fee * sumList ws := by
  intro ws
  induction ws with
  | nil =>
    show W * 0 + 0 = fee * 0
    omega
  | cons w ws ih =>
    show W * (providerSlice fee w W + sliceSum fee W ws) + (fee * w % W + remSum fee W ws)
        = fee * (w + sumList ws)
    have hq : fee * w % W + W * (fee * w / W) = fee * w := Nat.mod_add_div (fee * w) W
    have d1 : W * (providerSlice fee w W + sliceSum fee W ws)
        = W * (fee * w / W) + W * sliceSum fee W ws :=
      Nat.left_distrib W (fee * w / W) (sliceSum fee W ws)
    have d2 : fee * (w + sumList ws) = fee * w + fee * sumList ws := Nat.left_distrib fee w (sumList ws)
    omega

/-- Each remainder is below `W` (`Nat.mod_lt`), so `sum(r_i) + N ≤ W * N`. -/
theorem rem_bound (fee W : Nat) (hW : 0 < W) :
    ∀ ws : List Nat, remSum fee W ws + ws.length ≤ W * ws.length := by
  intro ws
  induction ws with
  | nil =>
    show 0 + 0 ≤ W * 0
    omega
  | cons w ws ih =>
    show (fee * w % W + remSum fee W ws) + (ws.length + 1) ≤ W * (ws.length + 1)
    have hr : fee * w % W < W := Nat.mod_lt (fee * w) hW
    have hd : W * (ws.length + 1) = W * ws.length + W * 1 := Nat.left_distrib W ws.length 1
    omega

/-- `sum(slices) ≤ fee`. Argument: `W * S + R = fee * W` (`div_sum` with `W = sum(weights)`); if
`S ≥ fee + 1` then `W * S ≥ W * fee + W > W * fee` (`Nat.mul_le_mul` with `Nat.le_refl W`), a
contradiction as `W > 0`. -/
theorem sliceSum_le_fee (fee : Nat) (ws : List Nat) (hW : 0 < sumList ws) :
    sliceSum fee (sumList ws) ws ≤ fee := by
  have h := div_sum fee (sumList ws) ws
  have hc : fee * sumList ws = sumList ws * fee := Nat.mul_comm fee (sumList ws)
  by_cases hlt : fee + 1 ≤ sliceSum fee (sumList ws) ws
  · have hm : sumList ws * (fee + 1) ≤ sumList ws * sliceSum fee (sumList ws) ws :=
      Nat.mul_le_mul (Nat.le_refl (sumList ws)) hlt
    have hd : sumList ws * (fee + 1) = sumList ws * fee + sumList ws * 1 :=
      Nat.left_distrib (sumList ws) fee 1
    omega
  · omega

/-- `fee < sum(slices) + N`. Argument: if `S + N ≤ fee` then `W * S + W * N ≤ W * fee = W * S + R`
(`Nat.mul_le_mul` with `Nat.le_refl W`) so `W * N ≤ R`, but `R + N ≤ W * N` (`rem_bound`) forces `N = 0`, contradicting `N ≥ 1`. -/
theorem fee_lt_sliceSum_add_count (fee : Nat) (ws : List Nat) (hW : 0 < sumList ws)
    (hN : 0 < ws.length) : fee < sliceSum fee (sumList ws) ws + ws.length := by
  have h := div_sum fee (sumList ws) ws
  have hc : fee * sumList ws = sumList ws * fee := Nat.mul_comm fee (sumList ws)
  have hr := rem_bound fee (sumList ws) hW ws
  by_cases hge : sliceSum fee (sumList ws) ws + ws.length ≤ fee
  · have hm : sumList ws * (sliceSum fee (sumList ws) ws + ws.length) ≤ sumList ws * fee :=
      Nat.mul_le_mul (Nat.le_refl (sumList ws)) hge
    have hd : sumList ws * (sliceSum fee (sumList ws) ws + ws.length)
        = sumList ws * sliceSum fee (sumList ws) ws + sumList ws * ws.length :=
      Nat.left_distrib (sumList ws) (sliceSum fee (sumList ws) ws) ws.length
    omega
  · omega

/-- Rule S4 (conservation), for all N and any failed flags: `sum(payouts) + residual + refund = fee`
whenever the total weight is positive. Argument: payouts + refund = paid slices
(`payouts_add_refund`) ≤ all slices (`paid_le_sliceSum`) ≤ fee (`sliceSum_le_fee`), so the
truncated subtraction `fee - paid` is exact. -/
theorem settle_conserves (fee : Nat) (weights : List Nat) (failedFlags : List Bool)
    (hW : 0 < sumList weights) :
    sumList (settleParts fee weights failedFlags).payouts + (settleParts fee weights failedFlags).residual
      + (settleParts fee weights failedFlags).refund = fee := by
  have e1 : (settleParts fee weights failedFlags).payouts
      = payoutsOf fee (sumList weights) weights failedFlags := rfl
  have e2 : (settleParts fee weights failedFlags).residual
      = fee - paidSlicesOf fee (sumList weights) weights failedFlags := rfl
  have e3 : (settleParts fee weights failedFlags).refund
      = refundOf fee (sumList weights) weights failedFlags := rfl
  rw [e1]
  have hs := payouts_add_refund fee (sumList weights) weights failedFlags
  have hp := paid_le_sliceSum fee (sumList weights) weights failedFlags
  have hf := sliceSum_le_fee fee weights hW
  omega

/-- Rule S3 (residual bound), for all N ≥ 1: the lead's residual is `< N` (so in `[0, N-1]`), with
one flag per provider. Argument: `fee_lt_sliceSum_add_count` with paid slices = all slices
(`paid_eq_sliceSum`). -/
theorem residual_lt_count (fee : Nat) (weights : List Nat) (failedFlags : List Bool)
    (hLen : failedFlags.length = weights.length) (hN : 0 < weights.length) (hW : 0 < sumList weights) :
    (settleParts fee weights failedFlags).residual < weights.length := by
  have e2 : (settleParts fee weights failedFlags).residual
      = fee - paidSlicesOf fee (sumList weights) weights failedFlags := rfl
  have hp := paid_eq_sliceSum fee (sumList weights) weights failedFlags hLen.symm
  have hb := fee_lt_sliceSum_add_count fee weights hW hN
  omega

/-- Provider `i`'s payout depends only on its own work and flag:
`payouts[i] = cond failed[i] 0 (fee * weights[i] / W)`. Induction on the weights, then on `i`. -/
theorem payout_lookup (fee W : Nat) :
    ∀ (ws : List Nat) (fs : List Bool) (i w : Nat) (f : Bool),
      lookup ws i = some w → lookup fs i = some f →
      lookup (payoutsOf fee W ws fs) i = some (cond f 0 (providerSlice fee w W)) := by
  intro ws
  induction ws with
  | nil =>
    intro fs i w f hw _
    have hn : (none : Option Nat) = some w := hw
    cases hn
  | cons x xs ih =>
    intro fs i w f hw hf
    cases fs with
    | nil =>
      have hn : (none : Option Bool) = some f := hf
      cases hn
    | cons g gs =>
      cases i with
      | zero =>
        have hx : some x = some w := hw
        have hg : some g = some f := hf
        cases hx
        cases hg
        rfl
      | succ n =>
        have hw' : lookup xs n = some w := hw
        have hf' : lookup gs n = some f := hf
        exact ih gs n w f hw' hf'

/-- Rules S2 and S5 (forfeit isolation), for all N: for any two flag lists, a provider `i` (work
`w`) that is not failed in either gets the same payout under both; a failed provider gets 0.
Argument: `payout_lookup` shows payout `i` reads only `weights[i]` and `flags[i]`. -/
theorem forfeit_isolation (fee : Nat) (weights : List Nat) (flagsA flagsB : List Bool) (i w : Nat)
    (hw : lookup weights i = some w) :
    (lookup flagsA i = some false → lookup flagsB i = some false →
      lookup (settleParts fee weights flagsA).payouts i = lookup (settleParts fee weights flagsB).payouts i) ∧
    (lookup flagsA i = some true → lookup (settleParts fee weights flagsA).payouts i = some 0) := by
  constructor
  · intro hA hB
    have ea := payout_lookup fee (sumList weights) weights flagsA i w false hw hA
    have eb := payout_lookup fee (sumList weights) weights flagsB i w false hw hB
    exact ea.trans eb.symm
  · intro hA
    exact payout_lookup fee (sumList weights) weights flagsA i w true hw hA

/-- At a fee equal to the total weight, a slice is its weight: `W * w / W = w` for `W > 0`
(`Nat.mul_div_cancel_left`). -/
theorem providerSlice_self (w W : Nat) (hW : 0 < W) : providerSlice W w W = w := by
  show W * w / W = w
  exact Nat.mul_div_cancel_left w hW

/-- At a fee equal to the total weight, the slices add up to the weights. Induction; each step is
`providerSlice_self`. -/
theorem sliceSum_self (W : Nat) (hW : 0 < W) : ∀ ws : List Nat, sliceSum W W ws = sumList ws := by
  intro ws
  induction ws with
  | nil => rfl
  | cons w ws ih =>
    show providerSlice W w W + sliceSum W W ws = w + sumList ws
    rw [providerSlice_self w W hW, ih]

/-- Issue 19 (fee equal to the quote), for all N: with `fee = sum(weights) > 0` and one flag per
provider, the residual is 0 and provider `i`'s payout is exactly its weight (0 if failed).
Argument: every slice is its weight (`providerSlice_self`), so the paid slices are the weights'
sum (`paid_eq_sliceSum`, `sliceSum_self`) and `payout_lookup` gives each payout. -/
theorem quote_paid_exactly (fee : Nat) (weights : List Nat) (failedFlags : List Bool)
    (hFee : fee = sumList weights) (hLen : failedFlags.length = weights.length)
    (hW : 0 < sumList weights) :
    (settleParts fee weights failedFlags).residual = 0 ∧
    (∀ (i w : Nat) (f : Bool), lookup weights i = some w → lookup failedFlags i = some f →
      lookup (settleParts fee weights failedFlags).payouts i = some (cond f 0 w)) := by
  subst hFee
  constructor
  · have e2 : (settleParts (sumList weights) weights failedFlags).residual
        = sumList weights - paidSlicesOf (sumList weights) (sumList weights) weights failedFlags := rfl
    have hp := paid_eq_sliceSum (sumList weights) (sumList weights) weights failedFlags hLen.symm
    have hs := sliceSum_self (sumList weights) hW weights
    omega
  · intro i w f hw hf
    have e := payout_lookup (sumList weights) (sumList weights) weights failedFlags i w f hw hf
    rw [providerSlice_self w (sumList weights) hW] at e
    exact e

/-- Rule S0 against the quote, per provider: the value of the work served for `positions`
positions is the quoted share, `p * (s * T) = p * s * T` (`Nat.mul_assoc`). -/
theorem value_eq_quotedShare (price workPerPosition positions : Nat) :
    providerValue price (workPerPosition * positions) = quotedShare price workPerPosition positions := by
  show price * (workPerPosition * positions) = price * workPerPosition * positions
  exact (Nat.mul_assoc price workPerPosition positions).symm

/-- The values add up to the quote, for all N. Induction; each step is `value_eq_quotedShare`. -/
theorem sum_values_eq_quote (positions : Nat) :
    ∀ (ps ss : List Nat), sumList (valuesOf positions ps ss) = quoteOf positions ps ss := by
  intro ps
  induction ps with
  | nil =>
    intro ss
    rfl
  | cons p ps ih =>
    intro ss
    cases ss with
    | nil => rfl
    | cons s ss =>
      show providerValue p (s * positions) + sumList (valuesOf positions ps ss)
          = quotedShare p s positions + quoteOf positions ps ss
      rw [value_eq_quotedShare p s positions, ih ss]

/-- Issue 19 at the cohort level, for all N: a fee equal to the quote, settled over the members'
values, has residual 0 and pays each member exactly its value (0 if failed); each value is its
quoted share (`value_eq_quotedShare`). Argument: `sum_values_eq_quote`, then `quote_paid_exactly`. -/
theorem quote_pays_values (positions : Nat) (prices perPosition : List Nat) (failedFlags : List Bool)
    (fee : Nat) (hFee : fee = quoteOf positions prices perPosition)
    (hLen : failedFlags.length = (valuesOf positions prices perPosition).length)
    (hQ : 0 < quoteOf positions prices perPosition) :
    (settleParts fee (valuesOf positions prices perPosition) failedFlags).residual = 0 ∧
    (∀ (i v : Nat) (f : Bool), lookup (valuesOf positions prices perPosition) i = some v →
      lookup failedFlags i = some f →
      lookup (settleParts fee (valuesOf positions prices perPosition) failedFlags).payouts i
        = some (cond f 0 v)) := by
  have hs := sum_values_eq_quote positions prices perPosition
  have hFee' : fee = sumList (valuesOf positions prices perPosition) := by omega
  have hW : 0 < sumList (valuesOf positions prices perPosition) := by omega
  exact quote_paid_exactly fee (valuesOf positions prices perPosition) failedFlags hFee' hLen hW

end Verisplit
