"""Tiny random model and prompt for the streaming tests (float32, XLA attention)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from hybrid_forcing_jax.config import tiny_config
from hybrid_forcing_jax.dit import WanDiT, init_params

LATENT_HW = (4, 6)   # 2 x 3 = 6 tokens per latent frame


def tiny_model(seed: int = 0, linear_proj: bool = False, num_layers: int = 2):
  config = tiny_config(linear_proj=linear_proj, num_layers=num_layers)
  params = init_params(config, jax.random.key(seed), param_dtype=jnp.float32)
  # Wan zero-initialises the output head; give it weights so every token matters.
  head = params["head"]["head"]["weight"]
  params["head"]["head"]["weight"] = 0.3 * jax.random.normal(jax.random.key(seed + 1), head.shape)
  return WanDiT(config, dtype=jnp.float32, param_dtype=jnp.float32, attention_backend="xla"), params


def random_linear_proj(params, seed: int):
  """Give every layer's linear_proj non-zero weights (trained-like) so the linear branch is visible."""
  lp = params["blocks"]["self_attn"]["linear_proj"]
  k1, k2 = jax.random.split(jax.random.key(seed))
  new = {"weight": 0.5 * jax.random.normal(k1, lp["weight"].shape), "bias": 0.1 * jax.random.normal(k2, lp["bias"].shape)}
  params = jax.tree_util.tree_map(lambda x: x, params)
  params["blocks"]["self_attn"]["linear_proj"] = new
  return params


def context(model, seed: int, batch: int = 1, length: int = 5):
  return jax.random.normal(jax.random.key(seed), (batch, length, model.config.text_dim))
