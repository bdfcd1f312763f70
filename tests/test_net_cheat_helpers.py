"""Test-only provider behaviours loaded by provider processes through ``python -m cheatkit.serve module:Class``.

The provider processes import this module (``PYTHONPATH`` includes ``tests/``), so it must stay
light. The small tests below pin what each behaviour does to its hooks.
"""

from __future__ import annotations

import pytest
import torch
from nacl.signing import SigningKey

from verisplit.impl.node.behaviour import Behaviour


class SendOther(Behaviour):
    """Commits to the true output but sends a perturbed tensor (caught as output_mismatch)."""

    name = "test_send_other"

    def sent(self, step: int, committed_output: torch.Tensor) -> torch.Tensor:
        return committed_output + 1.0


class SignWithOtherKey(Behaviour):
    """Signs every commitment with a fresh key instead of the offer's key (caught as wrong_signer)."""

    name = "test_wrong_key"

    def __init__(self) -> None:
        self.other = SigningKey(bytes(range(32)))

    def signing_key(self, step: int, offer_key: SigningKey) -> SigningKey:
        return self.other


class Bf16Boundary(Behaviour):
    """Launders precision: commits to (and sends) its boundary output in bfloat16 in a float32 cohort,
    honestly signed over those bytes (caught on receipt by rule H5 as bad_boundary, blamed on it)."""

    name = "test_bf16_boundary"

    def output(self, step: int, inputs: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        return output.to(torch.bfloat16)


class NanBoundary(Behaviour):
    """Signs a boundary output holding NaN (caught by rule H5 as bad_boundary)."""

    name = "test_nan_boundary"

    def output(self, step: int, inputs: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        out = output.clone()
        out.view(-1)[0] = float("nan")
        return out


@pytest.mark.net
def test_boundary_launderers_change_dtype_or_finiteness() -> None:
    out = torch.zeros(2, 3)
    assert Bf16Boundary().output(0, torch.zeros(2), out).dtype == torch.bfloat16
    assert torch.isnan(NanBoundary().output(0, torch.zeros(2), out)).any() and not torch.isnan(out).any()


@pytest.mark.net
def test_send_other_changes_only_the_sent_tensor() -> None:
    out = torch.zeros(2, 3)
    behaviour = SendOther()
    assert behaviour.output(0, torch.zeros(2), out) is out
    assert not torch.equal(behaviour.sent(0, out), out)


@pytest.mark.net
def test_sign_with_other_key_uses_a_different_key() -> None:
    mine = SigningKey.generate()
    assert bytes(SignWithOtherKey().signing_key(0, mine).verify_key) != bytes(mine.verify_key)
