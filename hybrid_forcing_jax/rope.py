"""Wan's 3D rotary position embedding, computed in float32.

Each head's channels are split (time, height, width) = config.rope_split (44/42/42 for head_dim 128)
and rotated as interleaved pairs (x[2i], x[2i+1]), as Wan's complex `view_as_complex` does. Temporal
positions are an explicit argument so a chunk can sit anywhere in a video (streaming, relative RoPE).
"""
from __future__ import annotations

import jax.numpy as jnp

from hybrid_forcing_jax.config import WanConfig


def inverse_frequencies(channels: int, theta: float) -> jnp.ndarray:
  """theta^(-2i/channels) for i < channels/2, as Wan's `rope_params`."""
  return 1.0 / theta ** (jnp.arange(0, channels, 2, dtype=jnp.float32) / channels)


def rope_tables(config: WanConfig, frame_positions: jnp.ndarray, height: int, width: int):
  """cos and sin tables, each [F * height * width, head_dim // 2] float32, tokens ordered (f, h, w).

  frame_positions: int [F] temporal index of every latent frame (absolute, or relative when capped).
  height, width: the token grid after patchify.
  """
  ct, ch, cw = config.rope_split
  frame_positions = jnp.asarray(frame_positions, jnp.float32)
  ang_t = frame_positions[:, None] * inverse_frequencies(ct, config.rope_theta)[None]
  ang_h = jnp.arange(height, dtype=jnp.float32)[:, None] * inverse_frequencies(ch, config.rope_theta)[None]
  ang_w = jnp.arange(width, dtype=jnp.float32)[:, None] * inverse_frequencies(cw, config.rope_theta)[None]
  num_frames = frame_positions.shape[0]
  angles = jnp.concatenate(
      [
          jnp.broadcast_to(ang_t[:, None, None], (num_frames, height, width, ct // 2)),
          jnp.broadcast_to(ang_h[None, :, None], (num_frames, height, width, ch // 2)),
          jnp.broadcast_to(ang_w[None, None, :], (num_frames, height, width, cw // 2)),
      ],
      axis=-1,
  ).reshape(num_frames * height * width, -1)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
  """Rotate x [B, L, H, D] by tables [L, D/2]; math in float32, result in x's dtype."""
  xf = x.astype(jnp.float32).reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
  x1, x2 = xf[..., 0], xf[..., 1]
  c, s = cos[None, :, None, :], sin[None, :, None, :]
  out = jnp.stack([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1)
  return out.reshape(x.shape).astype(x.dtype)
