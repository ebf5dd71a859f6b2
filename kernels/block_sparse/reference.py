"""Pure-JAX ground truth: dense attention with a mask expanded from the block table.

Logits, softmax statistics and the accumulation are float32; probabilities are cast to v's dtype before
the PV product (as the kernels do). Pass float32 inputs for an fp32 reference. Memory is O(B*H*Lq*Lk):
this is for tests and CPU use, not speed.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from kernels.block_sparse.selection import SparsePlan, block_mask


def dense_mask(table: jnp.ndarray, plan: SparsePlan) -> jnp.ndarray:
  """[B, H, Lq, Lk] bool from the [B, H, nq, n_sel] table."""
  blocks = block_mask(table, plan.n_k_blocks)                               # [B, H, nq, nk]
  rows = jnp.repeat(blocks, plan.block_q, axis=2)[:, :, :plan.lq]
  return jnp.repeat(rows, plan.block_k, axis=3)[..., :plan.lk]


def reference_attention(q, k, v, table, plan: SparsePlan):
  """Returns (out [B, Lq, H, D] in q's dtype, lse [B, H, Lq] float32, natural log)."""
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32,
                      precision=jax.lax.Precision.HIGHEST)
  logits = logits * (1.0 / math.sqrt(q.shape[-1]))
  logits = jnp.where(dense_mask(table, plan), logits, -jnp.inf)
  lse = jax.nn.logsumexp(logits, axis=-1)
  probs = jnp.exp(logits - lse[..., None])
  out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32,
                   precision=jax.lax.Precision.HIGHEST)
  return out.astype(q.dtype), lse
