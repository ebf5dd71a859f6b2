"""Small Flax layers whose parameters carry Wan's original names and PyTorch layouts.

Keeping Wan's layouts (a Linear's `weight` is [out, in]) makes the canonical parameter tree the Wan
checkpoint itself, stacked over layers; XLA folds the transpose into the matmul at no cost.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
# Wan initialises Linear weights with xavier_uniform; weight is [out, in].
xavier_torch_layout = nn.initializers.xavier_uniform(in_axis=-1, out_axis=-2)


class Linear(nn.Module):
  """y = x W^T (+ b) with W [out, in]; computes in `dtype` with float32 accumulation.

  output_dtype: the result's dtype (default `dtype`); umT5 keeps float32 outputs for its gated FFN.
  """
  features: int
  dtype: Dtype = jnp.bfloat16
  param_dtype: Dtype = jnp.bfloat16
  kernel_init: Any = xavier_torch_layout
  use_bias: bool = True
  output_dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x):
    w = self.param("weight", self.kernel_init, (self.features, x.shape[-1]), self.param_dtype)
    y = jax.lax.dot_general(x.astype(self.dtype), w.astype(self.dtype), (((x.ndim - 1,), (1,)), ((), ())),
                            preferred_element_type=jnp.float32)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype).astype(jnp.float32)
    return y.astype(self.output_dtype or self.dtype)


class RMSNorm(nn.Module):
  """Wan's RMSNorm over the full feature axis (across heads), statistics in float32."""
  eps: float
  dtype: Dtype = jnp.bfloat16

  @nn.compact
  def __call__(self, x):
    w = self.param("weight", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return (y * w).astype(self.dtype)


def layer_norm(x, eps: float) -> jnp.ndarray:
  """LayerNorm without affine parameters, in float32 (Wan's norm1/norm2/head.norm)."""
  xf = x.astype(jnp.float32)
  mean = jnp.mean(xf, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
  return (xf - mean) * jax.lax.rsqrt(var + eps)


class LayerNorm(nn.Module):
  """LayerNorm with float32 weight and bias (Wan's norm3 before cross-attention)."""
  eps: float
  dtype: Dtype = jnp.bfloat16

  @nn.compact
  def __call__(self, x):
    w = self.param("weight", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    b = self.param("bias", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
    return (layer_norm(x, self.eps) * w + b).astype(self.dtype)


def gelu_tanh(x):
  return jax.nn.gelu(x, approximate=True)
