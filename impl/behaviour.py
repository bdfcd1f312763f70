"""Provider behaviours: the honest default and the hook points test-only cheats override.

A provider consults its ``Behaviour`` at four points; the honest one changes nothing. Cheat modes
(``verisplit.impl.cheats``) register subclasses; they are reachable only through an explicit test
flag (``--cheat MODE`` together with ``VERISPLIT_ALLOW_CHEATS=1``), never by default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch
    from nacl.signing import SigningKey

    from verisplit.impl.segment import Segment

CHEATS_ENV = "VERISPLIT_ALLOW_CHEATS"

# The cheat catalogue and which check must catch each mode: "chain" (the lead's chain/receipt check)
# or "audit" (re-execution). Torch-free, so the spec-side conformance adapter can share it.
CAUGHT_BY: dict[str, str] = {
    "skip_layer": "audit",
    "int8_weights": "audit",
    "lower_precision": "audit",
    "noise": "audit",
    "other_model": "audit",
    "prefix_range": "audit",
    "replay": "audit",
    "wrong_key": "chain",
    "substitute_output": "chain",
    "sometimes": "audit",
}


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


BEHAVIOURS: dict[str, Callable[..., Behaviour]] = {"honest": Behaviour}


def register(name: str) -> Callable[[type[Behaviour]], type[Behaviour]]:
    """Class decorator adding a behaviour under ``name``."""

    def decorator(cls: type[Behaviour]) -> type[Behaviour]:
        cls.name = name
        BEHAVIOURS[name] = cls
        return cls

    return decorator


def make_behaviour(mode: str = "honest", **params: object) -> Behaviour:
    """The behaviour named ``mode``; unknown names raise ValueError listing the known ones."""
    if mode != "honest":
        import verisplit.impl.cheats  # noqa: F401  (registers the test-only modes)
    if mode not in BEHAVIOURS:
        raise ValueError(f"behaviour: unknown mode '{mode}' (known: {sorted(BEHAVIOURS)})")
    return BEHAVIOURS[mode](**params)
