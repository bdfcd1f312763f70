/-
Equivocation theorems (direct data path), for every abstract statement: a conviction needs two
different outputs, both signatures valid and one signer; a commitment never convicts its own signer
(an honest provider, which signs once per slot, is never named).

Lemmas relied on from core: none (projections of the definition's conjunction, and `rfl`).
-/
import Verisplit.Spec.Equivocation

namespace Verisplit

theorem equivocation_needs_distinct_outputs (p u : Stmt) (h : Equivocation p u) : p.output ≠ u.output :=
  h.2.2.1

theorem equivocation_needs_both_signatures (p u : Stmt) (h : Equivocation p u) :
    p.sigOk = true ∧ u.sigOk = true :=
  h.2.2.2

theorem equivocation_same_signer (p u : Stmt) (h : Equivocation p u) : p.signer = u.signer ∧ p.slot = u.slot :=
  ⟨h.2.1, h.1⟩

theorem equivocation_not_self (p : Stmt) : ¬ Equivocation p p :=
  fun h => h.2.2.1 rfl

end Verisplit
