"""The model-kind table: for each kind of converted checkpoint, its config class and its expected
parameter tree. It sits above the model files (which import nothing from checkpoint IO) and below
checkpoint.py, which checks every stored name and shape against it."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from hybrid_forcing_jax import dit, text_encoder, vae
from hybrid_forcing_jax.config import WanConfig
from hybrid_forcing_jax.world.codec import PixelCodecConfig


@dataclasses.dataclass(frozen=True)
class ModelKind:
  """How to rebuild a model of this kind: its config class and its expected parameter tree."""
  name: str
  config_from_dict: Callable[[dict], Any]
  param_shapes: Callable[[Any], Any]  # config -> pytree of jax.ShapeDtypeStruct (storage dtypes)


MODEL_KINDS = {kind.name: kind for kind in (
    ModelKind("wan_dit", WanConfig.from_dict, dit.param_shapes),
    ModelKind("wan_vae", vae.VaeConfig.from_dict, vae.param_shapes),
    ModelKind("umt5", text_encoder.UMT5Config.from_dict, text_encoder.param_shapes),
    # The world's lossless codec has no parameters: its folder holds the config and an empty weights
    # file, so it loads, and is told apart from a VAE, like every other converted folder.
    ModelKind("pixel_codec", PixelCodecConfig.from_dict, lambda config: {}),
)}


def get_model_kind(name: str) -> ModelKind:
  if name not in MODEL_KINDS:
    raise ValueError(f"unknown model kind {name!r}; known kinds: {sorted(MODEL_KINDS)}")
  return MODEL_KINDS[name]
