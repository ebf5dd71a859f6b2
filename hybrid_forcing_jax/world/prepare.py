"""Write what the world pipeline's configs (configs/world/) read: the frozen text encoder and its
tokenizer, the pixel codec, and a prompts file of training captions.

  python -m hybrid_forcing_jax.world.prepare --output=data/world [--num_prompts=1000 --seed=0]

    data/world/text/{text_encoder,tokenizer}/   world.text.save_world_text (seed 0: the shipped encoder)
    data/world/codec/                           latent_codec.save_pixel_codec
    data/world/prompts.txt                      world.captions.captions_file: train examples 0..N-1

Each part that already exists is kept (the pipeline's steps are resumable; nothing is overwritten).
"""
from __future__ import annotations

import os

from absl import flags

from hybrid_forcing_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("output", None, "Folder to write text/, codec/ and prompts.txt into")
flags.DEFINE_integer("num_prompts", 1000, "Captions in prompts.txt (make_ode_pairs writes one ODE pair per line)")
flags.DEFINE_integer("seed", 0, "Seed of the train examples whose captions go into prompts.txt")

TEXT, CODEC, PROMPTS = "text", "codec", "prompts.txt"


def prepare(output: str, num_prompts: int, seed: int) -> list[str]:
  """Write the missing parts into `output` -> the lines to print (what was written or kept)."""
  from hybrid_forcing_jax.latent_codec import save_pixel_codec
  from hybrid_forcing_jax.world.captions import captions_file
  from hybrid_forcing_jax.world.text import save_world_text
  writers = {TEXT: save_world_text, CODEC: save_pixel_codec,
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


def main(argv) -> int:
  if not FLAGS.output:
    raise cli.BadInput("--output is required (see --help)")
  if FLAGS.num_prompts < 1:
    raise cli.BadInput(f"--num_prompts must be >= 1, got {FLAGS.num_prompts}")
  if os.path.exists(FLAGS.output) and not os.path.isdir(FLAGS.output):
    raise cli.BadInput(f"--output={FLAGS.output}: exists and is not a folder")
  for line in prepare(FLAGS.output, FLAGS.num_prompts, FLAGS.seed):
    print(f"world.prepare: {line}")
  return 0


if __name__ == "__main__":
  cli.run(main, "world.prepare")
