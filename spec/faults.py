"""Why a request stopped early, and whether that makes anyone a culprit.

Two kinds of abort reason exist, and together they are every reason code the protocol uses:

- a *protocol failure* breaks a signed rule (H1-H4: ``verisplit.spec.commitment.REASONS``; on the
  direct data path also ``equivocation``, ``DIRECT_REASONS``: two valid signatures of one provider
  over different outputs for one slot): the
  provider that signed the offending commitment is the culprit; it is failed, forfeits its slice and
  is ejected;
- an *outage* breaks no signed rule (the provider could not be reached, answered with an error, was
  overloaded or slow, or sent bytes that are not a tensor of the boundary's shape): nobody is a
  culprit, nobody is ejected, and the links accepted before it still earn their work.

The implementation raises only these codes; a test checks that no reason code is spelled outside
``verisplit.spec``.
"""

from __future__ import annotations

from verisplit.spec.commitment import DIRECT_REASONS, REASONS

LINK_REASONS = tuple(REASONS) + DIRECT_REASONS  # every protocol failure (the culprit is ejected)

UNAVAILABLE = "unavailable"            # the provider could not be reached or dropped the stream
PROVIDER_ERROR = "provider_error"      # the provider answered with an error status
MALFORMED_OUTPUT = "malformed_output"  # output bytes are not a canonical tensor of the expected shape
RESOURCE_EXHAUSTED = "resource_exhausted"
TIMEOUT = "timeout"

OUTAGE_REASONS = (UNAVAILABLE, PROVIDER_ERROR, MALFORMED_OUTPUT, RESOURCE_EXHAUSTED, TIMEOUT)
ALL_REASONS = tuple(LINK_REASONS) + OUTAGE_REASONS


def is_protocol_failure(reason: str | None) -> bool:
    """True iff ``reason`` is one of the chain/receipt reasons (rules H1-H4), the only aborts that make
    the named provider a culprit (failed, forfeiting, ejected)."""
    return reason in LINK_REASONS


def is_outage(reason: str | None) -> bool:
    """True iff ``reason`` is an outage: an abort that blames nobody."""
    return reason in OUTAGE_REASONS
