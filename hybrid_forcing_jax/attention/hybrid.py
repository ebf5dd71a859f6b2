"""Hybrid attention of one layer for one chunk: softmax over sink + local window, plus linear memory.

Eq. 7 of Hybrid Forcing: o = softmax part + linear part, summed before the output projection, where
  softmax part = (block-sparse, Eq. 5-6) softmax attention over [sink | earlier window frames | chunk],
  linear part  = linear_proj(phi(q) S / (phi(q) z + eps)),  phi = ReLU,
with S, z the float32 means of phi(k) v^T and phi(k) over the evicted tokens (streaming/state.py). q and k of the
linear part are un-rotated: the released code puts RoPE'd q/k in the numerator and drops phi on q at
inference (peers_pytorch.md 1.3, 1.8); we follow the paper's equations instead.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import struct

from hybrid_forcing_jax.attention.dispatch import attention
from hybrid_forcing_jax.rope import apply_rope

if TYPE_CHECKING:   # the streaming engine sits above the models: no run-time import of it from here
  from hybrid_forcing_jax.streaming.config import StreamConfig


@struct.dataclass
class LayerCache:
  """One layer's slice of the stream state (streaming/state.py), scanned with the layer's parameters."""
  k: jnp.ndarray       # [B, S+R, T, H, D] un-rotated keys of the cached frames
  v: jnp.ndarray       # [B, S+R, T, H, D]
  lin_s: jnp.ndarray   # [B, H, D, D] float32 linear memory (Eq. 7)
  lin_z: jnp.ndarray   # [B, H, D] float32


@struct.dataclass
class CacheView:
  """What every layer reads about the cache for the current chunk (the same for all layers)."""
  gather: jnp.ndarray       # [S+R] slots in chronological order, valid first
  n_valid: jnp.ndarray      # int32 number of valid cached frames
  has_linear: jnp.ndarray   # bool: any token absorbed into the linear memory
  key_cos: jnp.ndarray      # [(S+R)*T, D/2] RoPE tables of the gathered frames
  key_sin: jnp.ndarray


def linear_readout(q, lin_s, lin_z, linear_proj, eps: float):
  """q [B, L, H, D] (un-rotated); lin_s [B, H, D, D], lin_z [B, H, D] float32 -> [B, L, H, D] float32.
  linear_proj = {weight W [D, D] (PyTorch [out, in]), bias b [D]}, shared across heads.

  Eq. 7's linear part, ((phi(q) S) / (phi(q) z + eps)) W^T + b, computed as (phi(q) (S W^T)) /
  (phi(q) z + eps) + b: the normaliser is one scalar per token and head, so the projection folds into
  the state (a [D, D] product per head) instead of a second pass over every token."""
  s_proj = jnp.einsum("bhde,fe->bhdf", lin_s, linear_proj["weight"].astype(jnp.float32),
                      precision=jax.lax.Precision.HIGHEST)
  # The per-token products at default matmul precision: TF32 on a GPU (half the time of full fp32 on
  # an H100, relative error ~3e-4, far below the bf16 of the softmax output this is added to); exact
  # fp32 on a CPU. The state itself is accumulated in full fp32 (state.py).
  phi = jax.nn.relu(q.astype(jnp.float32))
  num = jnp.einsum("blhd,bhde->blhe", phi, s_proj)
  den = jnp.einsum("blhd,bhd->blh", phi, lin_z) + eps
  return num / den[..., None] + linear_proj["bias"].astype(jnp.float32)


def _sparse_softmax(cfg: StreamConfig, q, cur_k, cur_v, cache_k, cache_v, n_valid, tokens: int):
  """Block-sparse attention has no key mask, so each possible number of cached frames (warm-up, then
  steady state; a static set) gets its own branch over exactly [valid cached frames | chunk], in the
  paper's key order, and the traced count picks the branch: one compiled step, exact selection.

  The keys [every cached slot | chunk] are concatenated before the switch, where the concatenation fuses with
  the cache's gather and rotation into one pass, and the steady-state branch (every slot valid: all but a
  stream's first chunks) attends over them as they are; only warm-up branches copy out their valid frames.
  (Concatenated inside the branches, the gathered cache would be written out first, since XLA does not fuse
  across a conditional, then copied again: ~230 MB more a layer and forward at 832x480, by arithmetic;
  not yet timed on a GPU.)"""
  counts = cfg.valid_frame_counts()
  slots = cache_k.shape[1] // tokens
  # The barrier keeps XLA from rewriting a warm-up branch's slices of the concatenation into slices of the
  # gathered cache, which would then be written out on its own again for that second reader.
  keys, vals = jax.lax.optimization_barrier((jnp.concatenate([cache_k, cur_k], axis=1),
                                             jnp.concatenate([cache_v, cur_v], axis=1)))

  def branch(n):
    def run(q, keys, vals):
      if n < slots:
        keys = jnp.concatenate([keys[:, :n * tokens], keys[:, slots * tokens:]], axis=1)
        vals = jnp.concatenate([vals[:, :n * tokens], vals[:, slots * tokens:]], axis=1)
      sink = min(n, cfg.sink_frames) * tokens if cfg.keep_sink else 0
      return attention(q, keys, vals, backend=cfg.sparse_backend, sparse_ratio=cfg.sparse_ratio,
                       keep_sink_tokens=sink, keep_own_chunk=cfg.keep_own_chunk)
    return run

  index = jnp.sum(jnp.asarray(counts, jnp.int32) < n_valid)
  return jax.lax.switch(index, [branch(n) for n in counts], q, keys, vals)


def stream_attention(cfg: StreamConfig, q, k, v, cos, sin, cache: LayerCache, view: CacheView, tokens: int,
                     linear_proj, backend: str):
  """One layer's self-attention for the current chunk.

  q, k, v [B, F*T, H, D] un-rotated (after norm_q / norm_k); cos, sin the chunk's RoPE tables.
  Returns [B, F*T, H, D] in q's dtype.
  """
  b, lq, h, d = q.shape
  qr, kr = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
  n = view.gather.shape[0]
  cache_k = jnp.take(cache.k, view.gather, axis=1).reshape(b, n * tokens, h, d).astype(k.dtype)
  cache_v = jnp.take(cache.v, view.gather, axis=1).reshape(b, n * tokens, h, d).astype(v.dtype)
  cache_k = apply_rope(cache_k, view.key_cos, view.key_sin)
  if cfg.sparse_ratio is None:
    # Dense: [chunk | valid cached | empty slots] makes the visible keys a prefix (kv_lengths).
    keys = jnp.concatenate([kr, cache_k], axis=1)
    vals = jnp.concatenate([v, cache_v], axis=1)
    lengths = jnp.full((b,), lq + view.n_valid * tokens, jnp.int32)
    out = attention(qr, keys, vals, kv_lengths=lengths, backend=backend)
  else:
    out = _sparse_softmax(cfg, qr, kr, v, cache_k, cache_v, view.n_valid, tokens)
  if cfg.linear and linear_proj is not None:
    lin = linear_readout(q, cache.lin_s, cache.lin_z, linear_proj, cfg.linear_eps)
    # Nothing absorbed yet: no linear term at all (linear_proj's bias would otherwise leak in).
    out = (out.astype(jnp.float32) + jnp.where(view.has_linear, lin, 0.0)).astype(q.dtype)
  return out
