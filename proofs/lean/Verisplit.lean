/-
Root of the verisplit Lean proofs: imports every Spec and Thm module, so `lake build` checks them all.
`tests/test_lean_static.py` fails when a file under `Verisplit/` is not reachable from here.
-/
import Verisplit.Spec.Settlement
import Verisplit.Spec.Deterrence
import Verisplit.Spec.Commitment
import Verisplit.Spec.Cohort
import Verisplit.Spec.Boundary
import Verisplit.Spec.Escrow
import Verisplit.Spec.Rollback
import Verisplit.Spec.Recovery
import Verisplit.Spec.Equivocation
import Verisplit.Thm.Settlement
import Verisplit.Thm.Deterrence
import Verisplit.Thm.Commitment
import Verisplit.Thm.Cohort
import Verisplit.Thm.Boundary
import Verisplit.Thm.Escrow
import Verisplit.Thm.Rollback
import Verisplit.Thm.Recovery
import Verisplit.Thm.Equivocation
