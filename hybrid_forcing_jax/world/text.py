"""The world model's text side: the project's umT5 encoder at a tiny size, with random frozen weights,
over the word tokenizer of the world grammar. The DiT learns to read its embeddings (their geometry is
random but fixed, like a frozen pretrained encoder's), so nothing here is trained.

Saved like the real pair, so every consumer loads it the usual way:
    folder/text_encoder/{config.json, model.safetensors}   (kind "umt5", checkpoint.save_checkpoint)
    folder/tokenizer/world_vocab.json
    TextEncoder.from_checkpoint(folder + "/text_encoder", folder + "/tokenizer", text_len=TEXT_LEN)
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from hybrid_forcing_jax.checkpoint import save_checkpoint
from hybrid_forcing_jax.param_tree import flatten
from hybrid_forcing_jax.text_encoder import TextEncoder, UMT5Config, init_params
from hybrid_forcing_jax.world import grammar
from hybrid_forcing_jax.world.tokenizer import WordTokenizer

TEXT_LEN = 32        # the longest caption has 16 words (+ the end id)
ENCODER_DIR, TOKENIZER_DIR = "text_encoder", "tokenizer"


def world_tokenizer() -> WordTokenizer:
  return WordTokenizer(grammar.vocabulary())


def world_umt5_config(vocab_size: int) -> UMT5Config:
  """Two layers of width 64: a few words need little; the DiT's text_dim must be 64 to match."""
  return UMT5Config(vocab_size=vocab_size, dim=64, dim_attn=64, ffn_dim=128, num_heads=4, num_layers=2,
                    num_buckets=32, max_distance=32)


def world_text_encoder(seed: int = 0) -> TextEncoder:
  """The encoder (float32, seeded random weights) with the grammar's word tokenizer."""
  tokenizer = world_tokenizer()
  config = world_umt5_config(tokenizer.vocab_size)
  params = jax.jit(lambda k: init_params(config, k, param_dtype=jnp.float32))(jax.random.key(seed))
  return TextEncoder(config, params, tokenizer, dtype=jnp.float32, text_len=TEXT_LEN)


def save_world_text(folder: str, seed: int = 0) -> None:
  """Write the text encoder and its tokenizer into `folder` (see the module docstring)."""
  encoder = world_text_encoder(seed)
  save_checkpoint(os.path.join(folder, ENCODER_DIR), "umt5", encoder.config,
                  {k: np.asarray(v) for k, v in flatten(encoder.params).items()})
  encoder.tokenizer.save(os.path.join(folder, TOKENIZER_DIR))


def load_world_text(folder: str) -> TextEncoder:
  return TextEncoder.from_checkpoint(os.path.join(folder, ENCODER_DIR), os.path.join(folder, TOKENIZER_DIR),
                                     dtype=jnp.float32, text_len=TEXT_LEN)
