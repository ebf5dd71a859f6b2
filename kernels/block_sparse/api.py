"""Block-sparse attention: selection + one of three implementations behind one differentiable function.

  out, lse = block_sparse_attention(q, k, v, sparse_ratio=0.2, impl="pallas_triton", return_lse=True)

impl: "xla" (dense-mask reference), "pallas_triton" (Triton lowering; interpret mode off-GPU),
"pallas_mosaic" (Hopper Mosaic GPU forward). Gradients (dq, dk, dv) flow through a `jax.custom_vjp`;
the selection is not differentiated.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from kernels.block_sparse import reference, selection, triton_attention
from kernels.block_sparse.selection import BLOCK, SparsePlan, make_plan, select_blocks

IMPLS = ("xla", "pallas_triton", "pallas_mosaic")


class UnsupportedError(ValueError):
  """An implementation cannot serve this call (dtype, head dim, platform); never a silent fallback."""


@dataclasses.dataclass(frozen=True)
class _Spec:
  impl: str
  plan: SparsePlan
  interpret: bool
  triton: triton_attention.TritonConfig
  mosaic: object | None = None


def on_hopper() -> bool:
  if jax.default_backend() != "gpu":
    return False
  cc = getattr(jax.devices()[0], "compute_capability", "")
  return str(cc).startswith("9")


def check_supported(impl: str, dtype, head_dim: int, *, interpret: bool = False) -> None:
  """Raises UnsupportedError naming the implementation and the reason."""
  dtype = jnp.dtype(dtype)
  platform = jax.default_backend()
  if impl == "xla":
    return
  if impl == "pallas_triton":
    if head_dim not in (16, 32, 64, 128, 256):
      raise UnsupportedError(f"block-sparse backend 'pallas_triton' needs head_dim in 16..256 and a power of 2, got {head_dim}")
    if interpret:
      if dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
        raise UnsupportedError(f"block-sparse backend 'pallas_triton' (interpret) supports f32/bf16/f16, got {dtype}")
      return
    if platform != "gpu":
      raise UnsupportedError(f"block-sparse backend 'pallas_triton' needs an NVIDIA GPU (or interpret=True); this process runs on {platform!r}")
    if dtype not in (jnp.bfloat16, jnp.float16):
      raise UnsupportedError(f"block-sparse backend 'pallas_triton' on GPU supports bfloat16/float16 inputs, got {dtype}")
    return
  if impl == "pallas_mosaic":
    from kernels.block_sparse import mosaic_attention
    mosaic_attention.check_supported(dtype, head_dim)
    return
  raise UnsupportedError(f"unknown block-sparse implementation {impl!r}; choose one of {IMPLS}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attend(q, k, v, table, spec: _Spec):
  return _forward(q, k, v, table, spec)


def _forward(q, k, v, table, spec: _Spec):
  p = spec.plan
  if spec.impl == "xla":
    return reference.reference_attention(q, k, v, table, p)
  if spec.impl == "pallas_triton":
    return triton_attention.forward(q, k, v, table, block_q=p.block_q, block_k=p.block_k, config=spec.triton,
                                    interpret=spec.interpret)
  from kernels.block_sparse import mosaic_attention
  return mosaic_attention.forward(q, k, v, table, plan=p, config=spec.mosaic)


def _attend_fwd(q, k, v, table, spec):
  out, lse = _forward(q, k, v, table, spec)
  return (out, lse), (q, k, v, table, out, lse)


def _attend_bwd(spec, res, cts):
  q, k, v, table, out, lse = res
  dout, dlse = cts
  p = spec.plan
  if spec.impl == "xla":
    _, vjp = jax.vjp(lambda q_, k_, v_: reference.reference_attention(q_, k_, v_, table, p), q, k, v)
    dq, dk, dv = vjp((dout, dlse))
    return dq, dk, dv, None
  delta = jnp.einsum("bqhd,bqhd->bhq", out.astype(jnp.float32), dout.astype(jnp.float32)) - dlse
  inv_ids, inv_counts = selection.inverse_table(table, p.n_k_blocks)
  # Both GPU implementations share the Triton backward kernels (see docs/kernels.md).
  dq, dk, dv = triton_attention.backward(q, k, v, lse, delta, dout.astype(q.dtype), table, inv_ids, inv_counts,
                                         block_q=p.block_q, block_k=p.block_k, config=spec.triton,
                                         interpret=spec.interpret)
  return dq, dk, dv, None


_attend.defvjp(_attend_fwd, _attend_bwd)


def block_sparse_attention(q, k, v, *, sparse_ratio: float = 0.2, keep_sink_tokens: int = 0,
                           keep_own_chunk: bool = False, impl: str = "pallas_triton", return_lse: bool = False,
                           interpret: bool | None = None, table: jnp.ndarray | None = None,
                           triton_config: triton_attention.TritonConfig = triton_attention.DEFAULT_CONFIG,
                           mosaic_config=None):
  """Top-k block-sparse attention. q [B, Lq, H, D], k/v [B, Lk, H, D] (BTNH).

  Returns out [B, Lq, H, D] (and lse [B, H, Lq] float32 if `return_lse`). `table` overrides the selection
  (a [B, H, ceil(Lq/64), n_sel] key-block table, e.g. from `select_blocks`), for tests and benchmarks.
  `interpret=None` means interpret mode exactly when no GPU is present (Triton only).
  """
  if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f"block_sparse_attention expects q [B,Lq,H,D] and k, v [B,Lk,H,D]; got {q.shape}, {k.shape}, {v.shape}")
  if interpret is None:
    interpret = jax.default_backend() != "gpu"
  check_supported(impl, q.dtype, q.shape[-1], interpret=interpret)
  plan = make_plan(q.shape[1], k.shape[1], sparse_ratio, keep_sink_tokens=keep_sink_tokens,
                   keep_own_chunk=keep_own_chunk)
  if table is None:
    table = select_blocks(q, k, plan)
  elif table.shape != (q.shape[0], q.shape[2], plan.n_q_blocks, table.shape[-1]):
    raise ValueError(f"table shape {table.shape} does not fit q {q.shape}")
  else:
    plan = dataclasses.replace(plan, top_k=table.shape[-1], forced=())
  mosaic_cfg = None
  if impl == "pallas_mosaic":
    from kernels.block_sparse import mosaic_attention
    mosaic_cfg = mosaic_config or mosaic_attention.DEFAULT_CONFIG
  spec = _Spec(impl, plan, bool(interpret), triton_config, mosaic_cfg)
  out, lse = _attend(q, k, v, jax.lax.stop_gradient(table), spec)
  return (out, lse) if return_lse else out
