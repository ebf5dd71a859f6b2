"""Attention over growing prefixes: query group g sees keys [0, visible[g]). Block-causal training
(group = chunk) and the streaming re-cache (group = frame) are both this."""
from __future__ import annotations

import jax.numpy as jnp

from hybrid_forcing_jax.attention.dispatch import attention


def prefix_attention(q, k, v, visible, backend: str):
  """q, k, v [B, L, H, D] (rotated); visible [G] int32, the number of keys each of the G equal query
  groups sees. Each group is a batch entry with a key-length mask over broadcast keys, so cuDNN skips
  the masked tail instead of reading a dense [L, L] mask. Returns [B, L, H, D]."""
  b, length, h, d = q.shape
  groups = visible.shape[0]
  qg = q.reshape(b * groups, length // groups, h, d)
  kg = jnp.broadcast_to(k[:, None], (b, groups) + k.shape[1:]).reshape(b * groups, length, h, d)
  vg = jnp.broadcast_to(v[:, None], (b, groups) + v.shape[1:]).reshape(b * groups, length, h, d)
  out = attention(qg, kg, vg, kv_lengths=jnp.tile(visible, b).astype(jnp.int32), backend=backend)
  return out.reshape(b, length, h, d)
