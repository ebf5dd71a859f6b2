"""Helpers for the PyTorch reference models of the parity tests."""
from __future__ import annotations

import pytest
torch = pytest.importorskip("torch")  # the test extra; without it this module is skipped


def perturb_parameters(model: torch.nn.Module, scale: float) -> torch.nn.Module:
  """Add scale * N(0, 1) to every parameter, so norms leave 1, biases leave 0 and every tensor holds
  distinct values (a mapping that swaps two tensors then shows up); returns the model in eval mode."""
  with torch.no_grad():
    for p in model.parameters():
      p.add_(scale * torch.randn_like(p))
  return model.eval()


def assert_same_state_dict(got: dict, want: dict) -> None:
  """The same keys, and every tensor bit-identical."""
  assert sorted(got) == sorted(want)
  for k in want:
    assert torch.equal(got[k], want[k]), k
