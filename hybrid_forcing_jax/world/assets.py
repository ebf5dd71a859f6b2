"""The world pipeline's inputs, written once into a folder (python -m hybrid_forcing_jax.world.prepare):

    FOLDER/text/{text_encoder,tokenizer}/   world.text.save_world_text (seed 0: the shipped encoder)
    FOLDER/codec/                           latent_codec.save_pixel_codec (its temporal factor: the layout)
    FOLDER/prompts.txt                      world.captions.captions_file: train examples 0..N-1
    FOLDER/prompts.json                     what prompts.txt was written with (number, seed, long-memory share)

Each part that already exists is kept (the pipeline's steps are resumable; nothing is overwritten); a kept
codec of another layout, or a kept prompts.txt written with other settings, is an error.
"""
from __future__ import annotations

import json
import os

from hybrid_forcing_jax.checkpoint import read_meta
from hybrid_forcing_jax.latent_codec import save_pixel_codec
from hybrid_forcing_jax.world.codec import PixelCodecConfig
from hybrid_forcing_jax.world.captions import captions_file
from hybrid_forcing_jax.world.scene import WorldConfig
from hybrid_forcing_jax.world.text import save_world_text

TEXT, CODEC, PROMPTS, PROMPTS_SETTINGS = "text", "codec", "prompts.txt", "prompts.json"


def prepare(output: str, num_prompts: int, seed: int, codec: PixelCodecConfig = PixelCodecConfig(),
            long_memory_fraction: float = 0.0) -> list[str]:
  """Write the missing parts into `output` -> the lines to print (what was written or kept). A kept codec
  folder of another layout than `codec` is an error (its ODE pairs and runs would not match the configs), as is a
  kept prompts.txt that prompts.json says was written with other settings (a prompts.txt without prompts.json,
  from before it or by hand, is kept as it is). long_memory_fraction: the share of long-memory scenes (captions
  without the colour, the object leaving and coming back) among the train examples whose captions are written."""
  if os.path.exists(os.path.join(output, CODEC)):
    found = read_meta(os.path.join(output, CODEC))["config"]
    if found != codec.to_dict():
      raise FileExistsError(f"{os.path.join(output, CODEC)} holds the codec {found}, not the one asked for "
                       f"{codec.to_dict()}: use another --output for another layout")
  settings = dict(num_prompts=num_prompts, seed=seed, long_memory_fraction=long_memory_fraction)
  sidecar = os.path.join(output, PROMPTS_SETTINGS)
  if os.path.exists(os.path.join(output, PROMPTS)) and os.path.exists(sidecar):
    with open(sidecar) as f:
      found = json.load(f)
    if found != settings:
      raise FileExistsError(f"{os.path.join(output, PROMPTS)} was written with {found}, not {settings}: use "
                            "another --output for other prompts")

  def write_prompts(path):   # the settings first: a prompts.txt never lies on disk without them
    with open(sidecar, "w") as f:
      json.dump(settings, f, indent=2)
    captions_file(path, num_prompts, seed, WorldConfig(long_memory_fraction=long_memory_fraction))

  writers = {TEXT: save_world_text, CODEC: lambda path: save_pixel_codec(path, codec), PROMPTS: write_prompts}
  lines = []
  for name, write in writers.items():
    path = os.path.join(output, name)
    if os.path.exists(path):
      lines.append(f"kept {path} (exists)")
      continue
    write(path)
    lines.append(f"wrote {path}")
  return lines
