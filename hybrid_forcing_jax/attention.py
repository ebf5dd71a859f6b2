"""The one attention entry point. Every attention in the project goes through `attention`.

Layout is BTNH: q [B, Lq, H, D], k and v [B, Lk, H, D]. `kv_lengths` [B] (optional) hides keys at
positions >= length; block-causal attention over chunks is expressed with it (see dit.py), and so is a
partly filled streaming cache. Backends are chosen by platform (`auto`) or forced by name; a backend
that cannot serve a call raises an error naming itself and the reason instead of falling back.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

AttentionFn = Callable[..., jnp.ndarray]
_BACKENDS: dict[str, AttentionFn] = {}


def register_backend(name: str):
  def wrap(fn: AttentionFn) -> AttentionFn:
    _BACKENDS[name] = fn
    return fn
  return wrap


def available_backends() -> tuple[str, ...]:
  return ("auto",) + tuple(sorted(_BACKENDS))


def resolve_backend(backend: str, dtype) -> str:
  """`auto` picks cuDNN for 16-bit inputs on a GPU and the XLA reference otherwise."""
  if backend == "auto":
    on_gpu = jax.default_backend() == "gpu"
    return "cudnn" if on_gpu and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else "xla"
  if backend not in _BACKENDS:
    raise ValueError(f"attention backend {backend!r} is unknown; choose one of {available_backends()}")
  return backend


def attention(q, k, v, *, kv_lengths=None, backend: str = "auto") -> jnp.ndarray:
  if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f"attention expects q [B,Lq,H,D] and k, v [B,Lk,H,D]; got q {q.shape}, k {k.shape}, v {v.shape}")
  return _BACKENDS[resolve_backend(backend, q.dtype)](q, k, v, kv_lengths=kv_lengths)


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
