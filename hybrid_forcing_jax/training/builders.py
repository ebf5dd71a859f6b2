"""Build a configured DiT (the generator, the teacher or the critic) from a `config.model`-shaped section.

A section holds `preset` ("wan_1_3b" | "wan_14b" | "tiny"), `overrides` (WanConfig fields, e.g.
linear_proj), `checkpoint` (a converted folder, "" = random init), `dtype`, `remat_policy` and
`attention_backend`; it may be an ml_collections ConfigDict or training.config's dataclass.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from hybrid_forcing_jax import dit
from hybrid_forcing_jax.checkpoint import load_checkpoint
from hybrid_forcing_jax.config import PRESETS, WanConfig, tiny_config

ARCHITECTURE_PRESETS = {**PRESETS, "tiny": tiny_config()}


def wan_config(model_cfg) -> WanConfig:
  """The architecture: the preset with the overrides applied (unknown fields are named)."""
  if model_cfg.preset not in ARCHITECTURE_PRESETS:
    raise ValueError(f"model.preset {model_cfg.preset!r} is not one of {sorted(ARCHITECTURE_PRESETS)}")
  fields = ARCHITECTURE_PRESETS[model_cfg.preset].to_dict()
  fields.update(dict(model_cfg.overrides))
  return WanConfig.from_dict(fields)


def build_module(model_cfg) -> dit.WanDiT:
  dtype = jnp.dtype(model_cfg.dtype)
  return dit.WanDiT(wan_config(model_cfg), dtype=dtype, param_dtype=dtype,
                    attention_backend=model_cfg.attention_backend, remat=model_cfg.remat_policy)


def build_dit(model_cfg, *, seed: int = 0, param_dtype=None):
  """-> (WanDiT module, params). Loads `checkpoint` (its config must equal the configured
  architecture) or random-inits with `seed`; params in `param_dtype` (default: the configured dtype;
  float32 norms and modulation stay float32 under a narrower request)."""
  module = build_module(model_cfg)
  param_dtype = jnp.dtype(param_dtype or model_cfg.dtype)
  if model_cfg.checkpoint:
    _, params = load_checkpoint(model_cfg.checkpoint, "wan_dit", expected_config=module.config, dtype=param_dtype)
  else:
    params = jax.jit(lambda k: dit.init_params(module.config, k, param_dtype=param_dtype))(jax.random.key(seed))
  return module, params
