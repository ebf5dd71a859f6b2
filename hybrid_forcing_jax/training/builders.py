"""Build a configured DiT (the generator, the teacher or the critic) from a `config.model`-shaped section.

A section holds `preset` ("wan_1_3b" | "wan_14b" | "tiny"), `overrides` (WanConfig fields, e.g.
linear_proj), `checkpoint` (a converted folder, "" = random init), `dtype`, `remat_policy` and
`attention_backend`; it may be an ml_collections ConfigDict or training.config's dataclass.

The phase switch (configs/hybrid.py) loads a dense checkpoint into a model with `linear_proj`: the one
architecture difference `build_dit` accepts, handled by name (`load_for_phase_switch`).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from hybrid_forcing_jax import dit
from hybrid_forcing_jax.checkpoint import flatten, get_model_kind, load_checkpoint, read_meta, unflatten
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
  if model_cfg.checkpoint and is_phase_switch(model_cfg.checkpoint, module.config):
    params = load_for_phase_switch(model_cfg.checkpoint, module.config, param_dtype)
  elif model_cfg.checkpoint:
    _, params = load_checkpoint(model_cfg.checkpoint, "wan_dit", expected_config=module.config, dtype=param_dtype)
  else:
    params = jax.jit(lambda k: dit.init_params(module.config, k, param_dtype=param_dtype))(jax.random.key(seed))
  return module, params


LINEAR_PROJ = ".linear_proj."  # the read-out of Hybrid Forcing's linear memory (dit.SelfAttention)


def is_phase_switch(checkpoint: str, config: WanConfig) -> bool:
  """A checkpoint of `config` without linear_proj (phase 1) asked for as `config` with it (phase 2)."""
  stored = get_model_kind("wan_dit").config_from_dict(read_meta(checkpoint)["config"])
  return config.linear_proj and stored == dataclasses.replace(config, linear_proj=False)


def load_for_phase_switch(checkpoint: str, config: WanConfig, param_dtype):
  """The dense checkpoint's parameters, every one loaded and checked by name against the dense model
  (nothing dropped, nothing renamed: the peers' strict=False loads lost keys silently, D10), plus the
  linear_proj parameters at ZERO, so the phase-2 model starts out computing the phase-1 model (the
  published code's xavier init made the branch live at once, D2)."""
  _, params = load_checkpoint(checkpoint, "wan_dit", expected_config=dataclasses.replace(config, linear_proj=False),
                              dtype=param_dtype)
  flat = flatten(params)
  wanted = flatten(dit.param_shapes(config, param_dtype))
  added = {name: jnp.zeros(spec.shape, spec.dtype) for name, spec in wanted.items() if name not in flat}
  if not added or any(LINEAR_PROJ not in name for name in added):
    raise ValueError(f"{checkpoint}: expected only linear_proj parameters to be missing, got {sorted(added)}")
  print(f"model.checkpoint {checkpoint}: a dense checkpoint; {sorted(added)} start at zero (phase switch: the "
        "linear memory's read-out is off until trained)", flush=True)
  return unflatten({**flat, **added})
