"""A tiny world model on disk: a DiT that reads the pixel codec's latents and the world text encoder's
embeddings, with random weights, saved as the folders `sample` and `evaluate_world` load."""
from __future__ import annotations

import os

import jax
import numpy as np

from hybrid_forcing_jax.checkpoint import save_checkpoint
from hybrid_forcing_jax.config import tiny_config
from hybrid_forcing_jax.dit import init_params
from hybrid_forcing_jax.latent_codec import save_pixel_codec
from hybrid_forcing_jax.param_tree import flatten
from hybrid_forcing_jax.world.codec import PixelCodecConfig
from hybrid_forcing_jax.world.text import save_world_text, world_tokenizer, world_umt5_config

CODEC = PixelCodecConfig()


def world_dit_config(linear_proj: bool = True):
  text_dim = world_umt5_config(world_tokenizer().vocab_size).dim
  return tiny_config(in_dim=CODEC.z_dim, out_dim=CODEC.z_dim, text_dim=text_dim, linear_proj=linear_proj)


def save_world_model(root: str, seed: int = 0, linear_proj: bool = True) -> dict[str, str]:
  """Write root/{dit, text, codec}; returns those folders. The output head is random, not Wan's
  zeros, so the videos depend on the prompt and the noise."""
  config = world_dit_config(linear_proj)
  params = init_params(config, jax.random.key(seed))
  head = params["head"]["head"]["weight"]
  params["head"]["head"]["weight"] = (0.05 * jax.random.normal(jax.random.key(seed + 1), head.shape)).astype(head.dtype)
  folders = {name: os.path.join(root, name) for name in ("dit", "text", "codec")}
  save_checkpoint(folders["dit"], "wan_dit", config, {k: np.asarray(v) for k, v in flatten(params).items()})
  save_world_text(folders["text"])
  save_pixel_codec(folders["codec"], CODEC)
  return folders
