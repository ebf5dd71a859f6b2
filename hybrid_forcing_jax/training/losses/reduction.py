"""The losses' precision and their one reduction: a mean of squares over the frames a mask keeps.

Losses accumulate in float32, or in float64 when x64 is enabled (Self-Forcing computes DMD in float64;
training_spec.md 2). The frame mask is Self-Forcing's `gradient_mask` (training_spec.md 2, long rollouts):
`F.mse_loss(a[mask], b[mask])` averages over the kept elements only, and so does `mean_square`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def loss_dtype():
  """float64 when x64 is enabled, else float32."""
  return jax.dtypes.canonicalize_dtype(jnp.float64)


def mean_square(diff, frame_mask=None):
  """mean(diff ** 2) over the elements of diff [B, F, ...] whose frame the mask keeps.

  frame_mask: None (every frame), or [F] / [B, F], bool or 0/1, where 1 keeps the frame.
  """
  sq = jnp.square(diff)
  if frame_mask is None:
    return jnp.mean(sq)
  frame_mask = jnp.asarray(frame_mask)
  if frame_mask.shape not in (diff.shape[1:2], diff.shape[:2]):
    raise ValueError(f"frame_mask must be [F] or [B, F] = {list(diff.shape[:2])} for a loss over "
                     f"{list(diff.shape)}, got {list(frame_mask.shape)}")
  keep = jnp.broadcast_to(frame_mask.reshape(frame_mask.shape + (1,) * (diff.ndim - 2)).astype(sq.dtype),
                          diff.shape)
  return jnp.sum(sq * keep) / jnp.sum(keep)
