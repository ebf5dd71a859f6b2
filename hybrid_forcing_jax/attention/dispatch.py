"""The one attention entry point. Every attention in the project goes through `attention`.

Layout is BTNH: q [B, Lq, H, D], k and v [B, Lk, H, D]. `kv_lengths` [B] (optional) hides keys at
positions >= length; block-causal attention over chunks is expressed with it (see prefix.py), and so is a
partly filled streaming cache. Backends are chosen by platform (`auto`) or forced by name; a backend
that cannot serve a call raises an error naming itself and the reason instead of falling back.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from hybrid_forcing_jax.mesh_batch import batch_spec

AttentionFn = Callable[..., jnp.ndarray]
_BACKENDS: dict[str, AttentionFn] = {}


def register_backend(name: str):
  def wrap(fn: AttentionFn) -> AttentionFn:
    _BACKENDS[name] = fn
    return fn
  return wrap


def available_backends() -> tuple[str, ...]:
  return ("auto",) + tuple(sorted(_BACKENDS))


SPARSE_BACKENDS = ("xla", "pallas_triton", "pallas_mosaic")


def resolve_backend(backend: str, dtype, sparse: bool = False) -> str:
  """`auto` picks, for dense calls, cuDNN for 16-bit inputs on a GPU and the XLA reference otherwise; for
  block-sparse calls (`sparse_ratio` set), the Mosaic GPU kernel on Hopper, the Triton kernel on other
  GPUs and the XLA dense-mask reference elsewhere."""
  if backend == "auto":
    on_gpu = jax.default_backend() == "gpu"
    if sparse:
      if not on_gpu or jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
        return "xla"
      from kernels.block_sparse import mosaic_attention, on_hopper
      return "pallas_mosaic" if on_hopper() and mosaic_attention.AVAILABLE else "pallas_triton"
    return "cudnn" if on_gpu and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else "xla"
  if backend not in _BACKENDS:
    raise ValueError(f"attention backend {backend!r} is unknown; choose one of {available_backends()}")
  if sparse and backend not in SPARSE_BACKENDS:
    raise ValueError(f"attention backend {backend!r} cannot do block-sparse attention (sparse_ratio set); "
                     f"use one of {SPARSE_BACKENDS}")
  return backend


def attention(q, k, v, *, kv_lengths=None, backend: str = "auto", sparse_ratio: float | None = None,
              keep_sink_tokens: int = 0, keep_own_chunk: bool = False) -> jnp.ndarray:
  """Softmax attention; returns the output [B, Lq, H, D] in q's dtype.

  `sparse_ratio=None` is dense attention. A ratio in (0, 1] is Hybrid Forcing's top-k block-sparse
  attention: per (batch, head, 64-query block) the floor(ratio * n_key_blocks) key blocks of 64 whose mean
  key best matches the mean query are attended (see kernels/block_sparse). `keep_sink_tokens` (keys
  [0, n)) and `keep_own_chunk` (keys [Lk - Lq, Lk)) force-keep blocks on top of the top-k. The LSE is
  available from `kernels.block_sparse.block_sparse_attention(..., return_lse=True)`.
  """
  if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f"attention expects q [B,Lq,H,D] and k, v [B,Lk,H,D]; got q {q.shape}, k {k.shape}, v {v.shape}")
  if sparse_ratio is None and (keep_sink_tokens or keep_own_chunk):
    raise ValueError("keep_sink_tokens / keep_own_chunk only apply to block-sparse attention (set sparse_ratio)")
  local = functools.partial(_attention_on_device, backend=backend, sparse_ratio=sparse_ratio,
                            keep_sink_tokens=keep_sink_tokens, keep_own_chunk=keep_own_chunk)
  batch = batch_spec(q.shape[0])
  if batch is None:
    return local(q, k, v, kv_lengths)
  # Under a mesh (mesh_batch.py) every example's attention is its own: each device attends over its examples.
  # Left to XLA, a kernel's inputs may come sharded otherwise (FSDP shards q/k/v's weights on their output
  # axis): cuDNN's partitioner then refuses q, k and v sharded unalike, and a Pallas call would be gathered
  # and replicated.
  lengths_spec = None if kv_lengths is None else batch
  return jax.shard_map(local, mesh=jax.sharding.get_abstract_mesh(), in_specs=(batch, batch, batch, lengths_spec),
                       out_specs=batch, check_vma=False)(q, k, v, kv_lengths)


def _attention_on_device(q, k, v, kv_lengths, *, backend, sparse_ratio, keep_sink_tokens, keep_own_chunk):
  """`attention` on arrays the caller holds whole (one device, or one device's examples under shard_map)."""
  if sparse_ratio is None:
    name = resolve_backend(backend, q.dtype)
    if name not in ("pallas_triton", "pallas_mosaic"):
      return _BACKENDS[name](q, k, v, kv_lengths=kv_lengths)
    sparse_ratio = 1.0   # the block-sparse kernels with every block kept: exact dense attention
  else:
    name = resolve_backend(backend, q.dtype, sparse=True)
  if kv_lengths is not None:
    raise ValueError(f"attention backend {name!r}: block-sparse attention takes no kv_lengths; "
                     "slice k and v to the visible keys instead")
  from kernels.block_sparse import block_sparse_attention
  return block_sparse_attention(q, k, v, sparse_ratio=sparse_ratio, keep_sink_tokens=keep_sink_tokens,
                                keep_own_chunk=keep_own_chunk, impl=name)


@register_backend("xla")
def _xla_attention(q, k, v, *, kv_lengths=None):
  """Dense reference: fp32 logits and softmax statistics, probabilities cast to v's dtype."""
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  logits = logits * (1.0 / math.sqrt(q.shape[-1]))
  if kv_lengths is not None:
    visible = jnp.arange(k.shape[1])[None, :] < kv_lengths[:, None]
    logits = jnp.where(visible[:, None, None, :], logits, -jnp.inf)
  probs = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return out.astype(q.dtype)


@register_backend("cudnn")
def _cudnn_attention(q, k, v, *, kv_lengths=None):
  if jnp.dtype(q.dtype) not in (jnp.bfloat16, jnp.float16):
    raise ValueError(f"attention backend 'cudnn' needs bfloat16 or float16 inputs, got {q.dtype}; use 'xla'")
  if jax.default_backend() != "gpu":
    raise ValueError(f"attention backend 'cudnn' needs a GPU; this process runs on {jax.default_backend()!r}")
  q_lengths = None if kv_lengths is None else jnp.full_like(kv_lengths, q.shape[1])
  return jax.nn.dot_product_attention(
      q, k, v, query_seq_lengths=q_lengths, key_value_seq_lengths=kv_lengths, implementation="cudnn")


def _block_sparse_only(name: str):
  def fn(q, k, v, *, kv_lengths=None):   # dense calls are routed by `attention` itself (ratio 1.0)
    raise ValueError(f"attention backend {name!r} is a block-sparse kernel; call it through `attention`")
  return fn


register_backend("pallas_triton")(_block_sparse_only("pallas_triton"))
register_backend("pallas_mosaic")(_block_sparse_only("pallas_mosaic"))
