"""The threat catalogue: the kinds of cheating a verified split must catch, and which check catches each.

This is protocol knowledge, not cheat code: it names each kind of deviation a provider could make
and the rule that exposes it. *chain*: the lead's chain check (``check_chain``, rules H1-H3) or
receipt check (``check_receipt``, rule H4) names the provider at once. *audit*: the commitment is
honestly signed over the bytes sent, so only re-executing the segment (rule A3, ``judge``) shows the
output is not the declared computation. The test-only implementations of these cheats live in
``tests/cheatkit`` (not shipped); a test checks that the two lists agree.
"""

from __future__ import annotations

CHAIN = "chain"
AUDIT = "audit"

# kind -> the check that must catch it
CAUGHT_BY: dict[str, str] = {
    "skip_layer": AUDIT,
    "int8_weights": AUDIT,
    "lower_precision": AUDIT,
    "noise": AUDIT,
    "other_model": AUDIT,
    "prefix_range": AUDIT,
    "replay": AUDIT,
    "wrong_key": CHAIN,
    "substitute_output": CHAIN,
    "sometimes": AUDIT,
}

# Kinds that behave honestly on step 0 and cheat from this step on.
CHEATS_FROM_STEP: dict[str, int] = {"replay": 1, "sometimes": 1}
