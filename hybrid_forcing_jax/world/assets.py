"""The world pipeline's inputs, written once into a folder (python -m hybrid_forcing_jax.world.prepare):

    FOLDER/text/{text_encoder,tokenizer}/   world.text.save_world_text (seed 0: the shipped encoder)
    FOLDER/codec/                           latent_codec.save_pixel_codec (its temporal factor: the layout)
    FOLDER/prompts.txt                      world.captions.captions_file: train examples 0..N-1

Each part that already exists is kept (the pipeline's steps are resumable; nothing is overwritten).
"""
from __future__ import annotations

import os

from hybrid_forcing_jax.checkpoint import read_meta
from hybrid_forcing_jax.latent_codec import save_pixel_codec
from hybrid_forcing_jax.world.codec import PixelCodecConfig
from hybrid_forcing_jax.world.captions import captions_file
from hybrid_forcing_jax.world.text import save_world_text

TEXT, CODEC, PROMPTS = "text", "codec", "prompts.txt"


def prepare(output: str, num_prompts: int, seed: int, codec: PixelCodecConfig = PixelCodecConfig()) -> list[str]:
  """Write the missing parts into `output` -> the lines to print (what was written or kept). A kept codec
  folder of another layout than `codec` is an error (its ODE pairs and runs would not match the configs)."""
  if os.path.exists(os.path.join(output, CODEC)):
    found = read_meta(os.path.join(output, CODEC))["config"]
    if found != codec.to_dict():
      raise FileExistsError(f"{os.path.join(output, CODEC)} holds the codec {found}, not the one asked for "
                       f"{codec.to_dict()}: use another --output for another layout")
  writers = {TEXT: save_world_text, CODEC: lambda path: save_pixel_codec(path, codec),
             PROMPTS: lambda path: captions_file(path, num_prompts, seed)}
  lines = []
  for name, write in writers.items():
    path = os.path.join(output, name)
    if os.path.exists(path):
      lines.append(f"kept {path} (exists)")
      continue
    write(path)
    lines.append(f"wrote {path}")
  return lines
