"""The provider's behaviour hook points, and the honest behaviour (the only one the wheel ships).

A provider consults its ``Behaviour`` at four points; the honest one changes nothing. Test-only cheat
modes (``tests/cheatkit``, not part of the distribution) subclass it to show that the lead's checks
and the audits catch them. No command-line option or environment variable selects a behaviour: only
Python code that starts a provider in-process can pass one (``ProviderSettings.behaviour``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from nacl.signing import SigningKey

    from verisplit.impl.runtime.segment import Segment


class Behaviour:
    """Honest behaviour: run the assigned range as loaded, commit to and send the true output,
    sign with the offer's key."""

    name = "honest"

    def prepare(self, segment: "Segment") -> None:
        """Called once after loading; a cheat may alter the segment (layers, weights, dtype)."""

    def output(self, step: int, inputs: "torch.Tensor", output: "torch.Tensor") -> "torch.Tensor":
        """The tensor the provider commits to (and, unless ``sent`` differs, sends) for ``step``."""
        return output

    def sent(self, step: int, committed_output: "torch.Tensor") -> "torch.Tensor":
        """The tensor actually put on the wire (a cheat may send other bytes than it signed)."""
        return committed_output

    def signing_key(self, step: int, offer_key: "SigningKey") -> "SigningKey":
        """The key that signs ``step``'s commitment (a cheat may use another)."""
        return offer_key
