"""The flow_matching stage's examples: world videos (world.dataset, split "train") through the latent
codec, each with its caption's embedding.

The grammar says at most `len(world.captions.all_captions())` (840) different captions, so they are
embedded once, by the frozen text encoder of `config.text`, into PromptEmbeddings' on-disk cache, and
an example looks its caption up there: no text encoder runs while training.
"""
from __future__ import annotations

import grain
import numpy as np

from hybrid_forcing_jax.training.data.prompts import PromptEmbeddings
from hybrid_forcing_jax.world.captions import all_captions
from hybrid_forcing_jax.world.codec import PixelCodec
from hybrid_forcing_jax.world.dataset import world_dataset
from hybrid_forcing_jax.world.scene import WorldConfig


def caption_embeddings(text_cfg, *, progress: bool = False) -> PromptEmbeddings:
  """Every caption of the grammar embedded (cached in text.cache_dir), in all_captions() order."""
  return PromptEmbeddings(all_captions(), text_cfg, progress=progress)


class _LatentsAndContext:
  """A world example -> {"latents" float32 [F, h, w, C], "context" bfloat16 [text_len, dim]} (a class, not
  a lambda, so grain's workers can pickle it)."""

  def __init__(self, embeddings: PromptEmbeddings):
    self.embeddings = embeddings
    self.index = {caption: i for i, caption in enumerate(embeddings.prompts)}

  def __call__(self, example: dict) -> dict:
    return {"latents": np.asarray(example["latents"], np.float32),
            "context": self.embeddings[self.index[example["caption"]]]}


def world_latent_dataset(world: WorldConfig, codec: PixelCodec, embeddings: PromptEmbeddings, *,
                         seed: int, num_examples: int | None = None) -> grain.MapDataset:
  """Train examples 0..num_examples-1 (None: endless, a fresh video each) of the world at `seed`,
  unbatched; the trainer batches and shards them and checkpoints the position."""
  return world_dataset(world, split="train", seed=seed, num_examples=num_examples, codec=codec).map(
      _LatentsAndContext(embeddings))
