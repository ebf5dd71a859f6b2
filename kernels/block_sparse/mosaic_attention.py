"""Block-sparse attention forward for Hopper (sm_90) on Pallas Mosaic GPU: TMA loads, wgmma, warp
specialisation (FlashAttention-3 structure), driven by the selection table.

One CTA = two 64-row query blocks of one (batch, head). Three warpgroups:
  * wg 0 and wg 1 (compute): each owns one query block and walks *its own* row of the key-block table
    (the two query blocks select different key blocks, so each has its own K/V ring of
    `max_concurrent_steps` slots); QK^T and PV are wgmma, the softmax is online in base 2, float32.
  * wg 2 (memory): reads the table (scalar loads from GMEM) and TMA-copies the selected K/V blocks into
    the two rings, waiting on per-slot "consumed" barriers.
When every key block is selected (ratio 1.0; detected statically as n_sel == n_key_blocks) the two query
blocks read the same K/V, so one ring is shared by both compute warpgroups (each slot freed by two
arrivals) and steps are two 64-key blocks wide: FA3's layout, half the L2->SMEM traffic.
Optionally the two compute warpgroups ping-pong on a schedule barrier (one's softmax overlaps the
other's matmuls), as FA3 does.

Ragged lengths: TMA zero-fills reads past the end and drops writes past the end, so a partial last query
block is computed on zero rows and never written; the last key block (the only ragged one, and always the
last table entry since rows are sorted) has its tail logits set to -inf. With an odd number of query
blocks, the table gets one duplicate row whose (fully out-of-range) output is dropped by TMA.

The backward pass reuses the Triton kernels (see api.py / docs/kernels.md).
Needs jax with `plgpu.kernel` (0.10+) and an sm_90 GPU; bf16/f16; head_dim multiple of 64 (<= 128).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax

AVAILABLE = True
LOG2E = math.log2(math.e)
LN2 = math.log(2.0)


@dataclasses.dataclass(frozen=True)
class MosaicConfig:
  max_concurrent_steps: int = 2     # K/V ring slots per compute warpgroup
  use_schedule_barrier: bool = True
  approx_math: bool = True
  blocks_per_step: int = 1          # 2: two selected 64-key blocks per step (128-wide wgmma tiles)
  # When every key block is selected (ratio 1.0) both query blocks of a CTA read the same K/V: one ring,
  # shared by the two compute warpgroups (FA3's layout), with these settings.
  shared_blocks_per_step: int = 2
  shared_max_concurrent_steps: int = 2


DEFAULT_CONFIG = MosaicConfig()


def check_supported(dtype, head_dim):
  from kernels.block_sparse.api import UnsupportedError
  dtype = jnp.dtype(dtype)
  if jax.default_backend() != "gpu":
    raise UnsupportedError(f"block-sparse backend 'pallas_mosaic' needs an NVIDIA Hopper GPU; this process runs on {jax.default_backend()!r}")
  cc = str(getattr(jax.devices()[0], "compute_capability", ""))
  if not cc.startswith("9"):
    raise UnsupportedError(f"block-sparse backend 'pallas_mosaic' needs compute capability 9.x (Hopper), got {cc!r}; use 'pallas_triton'")
  if dtype not in (jnp.bfloat16, jnp.float16):
    raise UnsupportedError(f"block-sparse backend 'pallas_mosaic' supports bfloat16/float16 inputs, got {dtype}")
  if head_dim % 64 or head_dim > 128:
    raise UnsupportedError(f"block-sparse backend 'pallas_mosaic' needs head_dim 64 or 128, got {head_dim}")


def forward(q, k, v, table, *, plan, config: MosaicConfig = DEFAULT_CONFIG, interpret=None):
  """Returns (out [B, Lq, H, D], lse [B, H, Lq] float32, natural log)."""
  import jax.experimental.pallas as pl
  import jax.experimental.pallas.mosaic_gpu as plgpu

  b_sz, lq, n_heads, d = q.shape
  lk = k.shape[1]
  dtype = q.dtype
  bq, bk = plan.block_q, plan.block_k
  nq, n_sel = table.shape[2], table.shape[3]
  if nq % 2:
    table = jnp.concatenate([table, table[:, :, -1:]], axis=2)
  n_pairs = table.shape[2] // 2
  shared = n_sel == plan.n_k_blocks        # every row is 0..nk-1: one K/V stream for both query blocks
  pack = config.shared_blocks_per_step if shared else config.blocks_per_step
  n_steps = -(-n_sel // pack)
  dup_last = n_steps * pack != n_sel       # the last step's second half repeats a block; masked out
  if dup_last:
    table = jnp.concatenate([table, table[..., -1:]], axis=3)
  bkk = bk * pack                          # keys per step
  slots = max(1, min(config.shared_max_concurrent_steps if shared else config.max_concurrent_steps, n_steps))
  rings = 1 if shared else 2               # K/V rings per CTA (one per compute warpgroup unless shared)
  qk_scale = LOG2E / math.sqrt(d)
  ragged_k = lk % bk != 0
  sched = config.use_schedule_barrier
  interp = interpret is not None
  # The CPU interpreter (tests only) lacks a few layout/register primitives; they are no-ops for the math.
  layout_cast = (lambda x, layout: x) if interp else plgpu.layout_cast
  set_max_registers = (lambda *a, **kw: None) if interp else plgpu.set_max_registers

  def kernel(table_ref, q_ref, k_ref, v_ref, out_ref, lse_ref, scoped):
    (qo_smem2, k_smem, v_smem, lse_smem2), (k_bars, v_bars, q_bars), (k_free, v_free), sched_bar = scoped
    bi = lax.axis_index("batch")
    hi = lax.axis_index("heads")
    pair = lax.axis_index("q_pair")
    wg = lax.axis_index("wg")

    def schedule_sync():
      if sched:
        plgpu.barrier_arrive(sched_bar)
        plgpu.barrier_wait(sched_bar)

    @pl.when(wg < 2)
    def _compute():
      set_max_registers(232, action="increase")
      qo_smem = qo_smem2.at[wg]
      lse_smem = lse_smem2.at[wg]
      qb = pair * 2 + wg
      q0 = qb * bq
      plgpu.copy_gmem_to_smem(q_ref.at[bi, pl.ds(q0, bq), hi], qo_smem, q_bars.at[wg])
      plgpu.barrier_wait(q_bars.at[wg])
      last_kbs = [table_ref[bi, hi, qb, (n_steps - 1) * pack + u] for u in range(pack)]

      m_i = layout_cast(jnp.full((bq,), -jnp.inf, jnp.float32), plgpu.Layout.WGMMA.reduce(1))
      l_i = layout_cast(jnp.full((bq,), 0.0, jnp.float32), plgpu.Layout.WGMMA.reduce(1))
      acc = layout_cast(jnp.full((bq, d), 0.0, jnp.float32), plgpu.Layout.WGMMA)

      pl.when(wg == 1)(schedule_sync)

      def step(j, carry, masked=False):
        acc, m_i, l_i = carry
        slot = (0 if shared else wg * slots) + lax.rem(j, jnp.int32(slots))
        plgpu.barrier_wait(k_bars.at[slot])

        def qk_fn(acc_ref):
          plgpu.wgmma(acc_ref, qo_smem, k_smem.at[slot].transpose((1, 0)))
          schedule_sync()
          return acc_ref[...]
        if interp:   # the interpreter has no transposed-ref wgmma; same product from the SMEM tiles
          s = jnp.dot(qo_smem[...], k_smem[slot].T, preferred_element_type=jnp.float32)
          schedule_sync()
        else:
          s = pl.run_scoped(qk_fn, plgpu.ACC((bq, bkk), jnp.float32))
        plgpu.barrier_arrive(k_free.at[slot])
        s = s * qk_scale
        if masked:
          if interp:
            cols = lax.broadcasted_iota(jnp.int32, (bq, bkk), 1)
          else:
            cols = plgpu.broadcasted_iota(jnp.int32, (bq, bkk), 1, layout=plgpu.Layout.WGMMA)
          # Column c holds key last_kbs[c // bk] * bk + c % bk: valid while < lk (and not a duplicate).
          valid = None
          for u in range(pack):
            if dup_last and u == pack - 1:
              continue
            part = (cols >= u * bk) & (cols < (u + 1) * bk) & (cols < lk - last_kbs[u] * bk + u * bk)
            valid = part if valid is None else (valid | part)
          s = jnp.where(valid, s, -jnp.inf)
        m_new = jnp.maximum(m_i, s.max(axis=1))
        alpha = jnp.exp2(m_i - m_new)
        p = jnp.exp2(s - lax.broadcast_in_dim(m_new, s.shape, [0]))
        acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0])
        l_i = l_i * alpha + p.sum(axis=1)
        p16 = p.astype(dtype)
        acc, l_i, m_new, p16 = lax.optimization_barrier((acc, l_i, m_new, p16))
        if sched:
          plgpu.barrier_arrive(sched_bar)
        plgpu.barrier_wait(v_bars.at[slot])
        if sched:
          plgpu.barrier_wait(sched_bar)

        def pv_fn(acc_ref):
          plgpu.wgmma(acc_ref, p16, v_smem.at[slot])
        if interpret is None:
          acc = pl.run_state(pv_fn)(plgpu.ACC.init(acc))
        else:
          acc = acc + jnp.dot(p16, v_smem[slot], preferred_element_type=jnp.float32)
        plgpu.barrier_arrive(v_free.at[slot])
        return acc, m_new, l_i

      carry = (acc, m_i, l_i)
      if ragged_k or dup_last:
        carry = lax.fori_loop(0, n_steps - 1, step, carry)
        carry = step(jnp.int32(n_steps - 1), carry, masked=True)
      else:
        carry = lax.fori_loop(0, n_steps, step, carry)
      acc, m_i, l_i = carry
      pl.when(wg == 0)(schedule_sync)

      acc = acc / lax.broadcast_in_dim(l_i, (bq, d), [0])
      qo_smem[...] = acc.astype(dtype)
      lse_smem[...] = m_i * LN2 + jnp.log(l_i)
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(qo_smem, out_ref.at[bi, pl.ds(q0, bq), hi])
      plgpu.copy_smem_to_gmem(lse_smem, lse_ref.at[bi, hi, pl.ds(q0, bq)])
      plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == 2)
    def _memory():
      set_max_registers(40, action="decrease")

      def copy(src_ref, smem, bars, w, j, slot):
        for u in range(pack):   # one TMA per 64-key block; the slot's barrier expects `pack` arrivals
          kb = table_ref[bi, hi, pair * 2 + w, j * pack + u]
          dst = smem.at[slot] if pack == 1 else smem.at[slot, pl.ds(u * bk, bk)]
          plgpu.copy_gmem_to_smem(src_ref.at[bi, pl.ds(kb * bk, bk), hi], dst, bars.at[slot])

      for j in range(slots):
        for w in range(rings):
          copy(k_ref, k_smem, k_bars, w, j, w * slots + j)
          copy(v_ref, v_smem, v_bars, w, j, w * slots + j)

      @pl.loop(0, n_steps - slots)
      def _(j):
        r = lax.rem(j, jnp.int32(slots))
        for w in range(rings):
          slot = w * slots + r
          plgpu.barrier_wait(k_free.at[slot])
          copy(k_ref, k_smem, k_bars, w, j + slots, slot)
          plgpu.barrier_wait(v_free.at[slot])
          copy(v_ref, v_smem, v_bars, w, j + slots, slot)

      # Drain: observe the consumption of the last `slots` steps, so every barrier phase is waited on.
      for w in range(rings):
        for r in range(slots):
          plgpu.barrier_wait(k_free.at[w * slots + r])
          plgpu.barrier_wait(v_free.at[w * slots + r])

  def entry(table_ref, q_ref, k_ref, v_ref, out_ref, lse_ref):
    swizzle = 128
    tiling = plgpu.TilingTransform((8, swizzle // jnp.dtype(dtype).itemsize))
    transforms = (tiling, plgpu.SwizzleTransform(swizzle))
    smem = (
        plgpu.SMEM((2, bq, d), dtype, transforms=transforms),
        plgpu.SMEM((rings * slots, bkk, d), dtype, transforms=transforms),
        plgpu.SMEM((rings * slots, bkk, d), dtype, transforms=transforms),
        plgpu.SMEM((2, bq), jnp.float32),
    )
    pl.run_scoped(
        lambda *scoped: kernel(table_ref, q_ref, k_ref, v_ref, out_ref, lse_ref, scoped),
        smem,
        (plgpu.Barrier(num_arrivals=pack, num_barriers=rings * slots),
         plgpu.Barrier(num_arrivals=pack, num_barriers=rings * slots),
         plgpu.Barrier(num_barriers=2)),
        (plgpu.Barrier(num_arrivals=3 - rings, num_barriers=rings * slots),
         plgpu.Barrier(num_arrivals=3 - rings, num_barriers=rings * slots)),
        plgpu.Barrier(num_arrivals=2),
        collective_axes="wg",
    )

  # TMA descriptors over a tiled (8, 64) box need the row count a multiple of 8: pad such (non-Wan) lengths.
  # The interpreter also rejects out-of-bounds boxes, which the hardware zero-fills / drops: pad fully there.
  lq_k, lk_k = -(-lq // 8) * 8, -(-lk // 8) * 8
  if interp:
    lq_k, lk_k = n_pairs * 2 * bq, plan.n_k_blocks * bk
  pad = lambda x, n: x if x.shape[1] == n else jnp.pad(x, ((0, 0), (0, n - x.shape[1]), (0, 0), (0, 0)))
  q, k, v = pad(q, lq_k), pad(k, lk_k), pad(v, lk_k)
  # The lse rows are written with 1-D bulk copies, which are not clipped at the end of a row: give every
  # query block a full row of room, slice afterwards.
  lse_len = n_pairs * 2 * bq

  out, lse = plgpu.kernel(
      entry,
      out_type=(jax.ShapeDtypeStruct(q.shape, dtype), jax.ShapeDtypeStruct((b_sz, n_heads, lse_len), jnp.float32)),
      grid=(n_pairs, n_heads, b_sz),
      grid_names=("q_pair", "heads", "batch"),
      num_threads=3,
      thread_name="wg",
      compiler_params=plgpu.CompilerParams(approx_math=config.approx_math),
      **({} if interpret is None else {"interpret": interpret}),
  )(table, q, k, v)
  return out[:, :lq], lse[..., :lq]
