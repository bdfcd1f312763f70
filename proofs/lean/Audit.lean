/-
Axiom audit (not part of the library build): `scripts/audit_axioms.py` runs
`lake env lean Audit.lean` and fails unless every theorem below depends only on
`propext`, `Classical.choice` and `Quot.sound`.
-/
import Verisplit

#print axioms Verisplit.settle_conserves
#print axioms Verisplit.residual_lt_count
#print axioms Verisplit.forfeit_isolation
#print axioms Verisplit.quote_paid_exactly
#print axioms Verisplit.value_eq_quotedShare
#print axioms Verisplit.sum_values_eq_quote
#print axioms Verisplit.quote_pays_values
#print axioms Verisplit.shard_deterred_of_whole
#print axioms Verisplit.shardDeterredGivenWhole_valid
#print axioms Verisplit.smaller_shard_larger_margin
#print axioms Verisplit.chain_detects_at
#print axioms Verisplit.chain_valid_of_honest
#print axioms Verisplit.tiles_iff_coverage
#print axioms Verisplit.rangeOk_iff_tilesFrom
#print axioms Verisplit.noRangeViolations_iff_tiles
#print axioms Verisplit.commitFor_some
#print axioms Verisplit.commitFor_none
#print axioms Verisplit.firstFailing_first
#print axioms Verisplit.firstFailing_none
#print axioms Verisplit.firstFailing_none_of_good
#print axioms Verisplit.checkChainFull_some
#print axioms Verisplit.checkChainFull_none
#print axioms Verisplit.commitFor_honest
#print axioms Verisplit.checkChainFull_honest
#print axioms Verisplit.checkBoundary_none_iff
#print axioms Verisplit.checkBoundary_rejects_other_dtype
#print axioms Verisplit.escrowStep_noFail
#print axioms Verisplit.escrowStep_fail
#print axioms Verisplit.accountStep_conserves
#print axioms Verisplit.run_conserves
#print axioms Verisplit.fresh_conserves
#print axioms Verisplit.runWindow_eq
#print axioms Verisplit.run_noFail_window
#print axioms Verisplit.runNoFail_window
#print axioms Verisplit.auditProbability_probation
#print axioms Verisplit.auditProbability_after
#print axioms Verisplit.escrowLoss_ge
#print axioms Verisplit.escrow_shard_deterred
#print axioms Verisplit.escrow_smaller_shard_larger_margin
#print axioms Verisplit.probation_deters
#print axioms Verisplit.franchise_scales
#print axioms Verisplit.franchise_deters_every_shard
#print axioms Verisplit.stepFollows_progress
#print axioms Verisplit.nextStart_follows
#print axioms Verisplit.stepFollows_trans_lt
#print axioms Verisplit.billable_plain
#print axioms Verisplit.replacement_covers
#print axioms Verisplit.replay_positions
#print axioms Verisplit.outage_refund_exact
#print axioms Verisplit.equivocation_needs_distinct_outputs
#print axioms Verisplit.equivocation_needs_both_signatures
#print axioms Verisplit.equivocation_same_signer
#print axioms Verisplit.equivocation_not_self
