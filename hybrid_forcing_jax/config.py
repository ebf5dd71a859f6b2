"""Architecture of the Wan2.1 DiT: a frozen dataclass, hashable so it can be a static jit argument.

Run-time choices (dtypes, attention backend, remat) are not architecture and live on the module.
"""
from __future__ import annotations

import dataclasses

from hybrid_forcing_jax.config_io import JsonConfig


PREDICTIONS = ("velocity", "x0")


@dataclasses.dataclass(frozen=True)
class WanConfig(JsonConfig):
  dim: int = 1536
  ffn_dim: int = 8960
  num_heads: int = 12
  num_layers: int = 30
  in_dim: int = 16
  out_dim: int = 16
  text_dim: int = 4096
  freq_dim: int = 256
  patch_size: tuple[int, int, int] = (1, 2, 2)
  eps: float = 1e-6
  rope_theta: float = 10000.0
  # Hybrid Forcing adds one Linear(head_dim, head_dim) per layer for the linear-attention read-out.
  linear_proj: bool = False
  # What the head's output means: "velocity" (Wan's eps - x0) or "x0", the clean latent, which the model turns
  # into the velocity itself (dit.WanDiT._as_velocity), so every caller still reads a velocity. x0 suits a
  # narrow net whose tokens hold nearly as many values as its width (the world's DiT): it must output clean data,
  # which lies near a low-dimensional manifold, not carry the full-rank noise through (Li & He 2025, "Back to
  # Basics: Let Denoising Generative Models Denoise", the x-prediction of JiT).
  prediction: str = "velocity"

  def __post_init__(self):
    object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
    if self.prediction not in PREDICTIONS:
      raise ValueError(f"WanConfig: prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
    if self.dim % self.num_heads:
      raise ValueError(f"WanConfig: dim {self.dim} is not divisible by num_heads {self.num_heads}")
    if self.head_dim % 2:
      raise ValueError(f"WanConfig: head_dim {self.head_dim} must be even for RoPE")

  @property
  def head_dim(self) -> int:
    return self.dim // self.num_heads

  @property
  def rope_split(self) -> tuple[int, int, int]:
    """Channels of each head given to (time, height, width) RoPE: 44/42/42 for head_dim 128."""
    hw = 2 * (self.head_dim // 6)
    return (self.head_dim - 2 * hw, hw, hw)


WAN_1_3B = WanConfig()
WAN_14B = WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
PRESETS = {"wan_1_3b": WAN_1_3B, "wan_14b": WAN_14B}


def tiny_config(**overrides) -> WanConfig:
  """A few-layer model for CPU tests: head_dim 24 keeps the 3-way RoPE split non-trivial."""
  base = dict(dim=48, ffn_dim=96, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=32, freq_dim=16)
  base.update(overrides)
  return WanConfig(**base)
