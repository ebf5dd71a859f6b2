"""Top-k key-block selection for block-sparse attention (runs on device, no host round trip).

For every (batch, head, 64-token query block) the key blocks are scored by the dot product of the
mean-pooled query block and the mean-pooled key block, in float32; a ragged last block is averaged
over its true length. The `k = max(1, floor(sparse_ratio * n_key_blocks))` best blocks are kept
(floor, as Hybrid Forcing's `int(topk * K)`; at least one block; ratio 1.0 keeps every block).

Optional force-keeps (default off, as in the paper):
  * `keep_sink_tokens=n`: every key block that overlaps keys [0, n) (the sink frames) is kept.
  * `keep_own_chunk=True`: every key block that overlaps keys [Lk - Lq, Lk), i.e. the query chunk's
    own keys (Hybrid Forcing lays the softmax set out as [sink | previous | current chunk]).
Forced blocks are kept in addition to the top-k chosen among the remaining blocks, so the number of
kept blocks per query block is a static `n_forced + min(k, n_key_blocks - n_forced)`.

The result is a table [B, H, n_q_blocks, n_sel] of key-block ids in ascending order (static shape,
every row distinct ids) that all kernels and the dense-mask reference consume.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

BLOCK = 64  # query and key block size of the selection (and of the kernels' tables)


@dataclasses.dataclass(frozen=True)
class SparsePlan:
  """Static geometry of one block-sparse call."""
  lq: int
  lk: int
  block_q: int
  block_k: int
  n_q_blocks: int
  n_k_blocks: int
  top_k: int                # blocks chosen by score
  forced: tuple[int, ...]   # key blocks kept regardless of score (ascending)

  @property
  def n_sel(self) -> int:
    return len(self.forced) + self.top_k


def num_topk_blocks(sparse_ratio: float, n_k_blocks: int) -> int:
  """floor(ratio * n) with a tolerance for binary fractions (0.2 * 220 = 44.000000000000004), clamped to [1, n]."""
  if not (0.0 < sparse_ratio <= 1.0):
    raise ValueError(f"sparse_ratio must be in (0, 1], got {sparse_ratio}")
  return int(min(n_k_blocks, max(1, math.floor(sparse_ratio * n_k_blocks + 1e-6))))


def make_plan(lq: int, lk: int, sparse_ratio: float, *, keep_sink_tokens: int = 0,
              keep_own_chunk: bool = False, block_q: int = BLOCK, block_k: int = BLOCK) -> SparsePlan:
  nq, nk = -(-lq // block_q), -(-lk // block_k)
  forced: set[int] = set()
  if keep_sink_tokens:
    forced.update(range(0, -(-min(keep_sink_tokens, lk) // block_k)))
  if keep_own_chunk:
    start = max(0, lk - lq)
    forced.update(range(start // block_k, nk))
  forced_t = tuple(sorted(forced))
  k = num_topk_blocks(sparse_ratio, nk)
  k = min(k, nk - len(forced_t))
  return SparsePlan(lq, lk, block_q, block_k, nq, nk, k, forced_t)


def mean_pool_blocks(x: jnp.ndarray, block: int) -> jnp.ndarray:
  """x [B, L, H, D] -> [B, H, ceil(L/block), D] float32 means; the last block over its true length.

  Written as reductions over slices (no padded copy), so XLA fuses the float32 conversion into one read.
  """
  b, l, h, d = x.shape
  n_full, tail = divmod(l, block)
  parts = []
  if n_full:
    full = x[:, :n_full * block].reshape(b, n_full, block, h, d)
    parts.append(jnp.sum(full, axis=2, dtype=jnp.float32) * (1.0 / block))
  if tail:
    parts.append(jnp.sum(x[:, n_full * block:], axis=1, keepdims=True, dtype=jnp.float32) * (1.0 / tail))
  means = jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]       # [B, n, H, D]
  return jnp.transpose(means, (0, 2, 1, 3))


def block_scores(q: jnp.ndarray, k: jnp.ndarray, block_q: int = BLOCK, block_k: int = BLOCK) -> jnp.ndarray:
  """[B, H, nq, nk] float32 scores: <mean q block, mean k block>."""
  qp = mean_pool_blocks(q, block_q)
  kp = mean_pool_blocks(k, block_k)
  return jnp.einsum("bhqd,bhkd->bhqk", qp, kp, precision=jax.lax.Precision.HIGHEST)


def select_blocks(q: jnp.ndarray, k: jnp.ndarray, plan: SparsePlan) -> jnp.ndarray:
  """Key-block table [B, H, nq, n_sel] int32, ascending per row. Not differentiated."""
  q = jax.lax.stop_gradient(q)
  k = jax.lax.stop_gradient(k)
  b, _, h, _ = q.shape
  if plan.top_k == plan.n_k_blocks:   # ratio 1.0: every block, no scoring needed
    row = jnp.arange(plan.n_k_blocks, dtype=jnp.int32)
    return jnp.broadcast_to(row, (b, h, plan.n_q_blocks, plan.n_k_blocks))
  scores = block_scores(q, k, plan.block_q, plan.block_k)
  parts = []
  if plan.forced:
    forced = jnp.asarray(plan.forced, jnp.int32)
    scores = scores.at[..., forced].set(-jnp.inf)
    parts.append(jnp.broadcast_to(forced, (b, h, plan.n_q_blocks, len(plan.forced))))
  if plan.top_k:
    _, idx = jax.lax.top_k(scores, plan.top_k)
    parts.append(idx.astype(jnp.int32))
  table = jnp.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
  return jnp.sort(table, axis=-1)


def block_mask(table: jnp.ndarray, n_k_blocks: int) -> jnp.ndarray:
  """Boolean [B, H, nq, nk]: which key blocks each query block attends."""
  onehot = table[..., :, None] == jnp.arange(n_k_blocks, dtype=table.dtype)
  return onehot.any(axis=-2)


def inverse_table(table: jnp.ndarray, n_k_blocks: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """For the dk/dv pass: per key block, the query blocks that selected it.

  Returns (ids [B, H, nk, nq] int32 with the selecting query blocks first, ascending; counts [B, H, nk] int32).
  """
  sel = jnp.swapaxes(block_mask(table, n_k_blocks), -1, -2)          # [B, H, nk, nq]
  nq = sel.shape[-1]
  key = jnp.where(sel, 0, nq) + jnp.arange(nq, dtype=jnp.int32)    # selected first, then by id
  ids = jnp.argsort(key, axis=-1).astype(jnp.int32)
  counts = sel.sum(axis=-1).astype(jnp.int32)
  return ids, counts


def select_blocks_numpy(q: np.ndarray, k: np.ndarray, plan: SparsePlan) -> np.ndarray:
  """Independent NumPy re-implementation of `select_blocks` (float64 scores), for tests."""
  q = np.asarray(q, np.float64)
  k = np.asarray(k, np.float64)
  b, lq, h, d = q.shape
  lk = k.shape[1]
  qp = np.stack([q[:, i * plan.block_q:(i + 1) * plan.block_q].mean(axis=1) for i in range(plan.n_q_blocks)], 2)
  kp = np.stack([k[:, j * plan.block_k:(j + 1) * plan.block_k].mean(axis=1) for j in range(plan.n_k_blocks)], 2)
  scores = np.einsum("bhqd,bhkd->bhqk", qp, kp)          # qp: [B, H, nq, D] after stacking on axis 2
  out = np.empty((b, h, plan.n_q_blocks, plan.n_sel), np.int32)
  forced = set(plan.forced)
  for bi in range(b):
    for hi in range(h):
      for qi in range(plan.n_q_blocks):
        cand = [j for j in np.argsort(-scores[bi, hi, qi], kind="stable") if j not in forced]
        out[bi, hi, qi] = sorted(list(forced) + [int(j) for j in cand[:plan.top_k]])
  return out
