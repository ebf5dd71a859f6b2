"""Write what the world pipeline's configs (configs/world/) read: the frozen text encoder and its
tokenizer, the pixel codec, and a prompts file of training captions (world/assets.py).

  python -m hybrid_forcing_jax.world.prepare --output=data/world [--num_prompts=1000 --seed=0]
  python -m hybrid_forcing_jax.world.prepare --output=data/world_frame --temporal_factor=1   # layout `frame`
  python -m hybrid_forcing_jax.world.prepare --output=data/world_memory --long_memory_fraction=0.3   # memory prompts

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
flags.DEFINE_float("long_memory_fraction", 0.0, "Share of long-memory scenes (no colour in the caption, the object "
                   "leaving and coming back: docs/world.md) among the train examples whose captions go into prompts.txt")
flags.DEFINE_integer("temporal_factor", 4, "Video frames a latent frame of the codec (the world configs' layout: 4 "
                     "by default, 1 for the variant `frame`)")


def main(argv) -> int:
  if not FLAGS.output:
    raise cli.BadInput("--output is required (see --help)")
  if FLAGS.num_prompts < 1:
    raise cli.BadInput(f"--num_prompts must be >= 1, got {FLAGS.num_prompts}")
  if os.path.exists(FLAGS.output) and not os.path.isdir(FLAGS.output):
    raise cli.BadInput(f"--output={FLAGS.output}: exists and is not a folder")
  if FLAGS.temporal_factor < 1:
    raise cli.BadInput(f"--temporal_factor must be >= 1, got {FLAGS.temporal_factor}")
  if not 0.0 <= FLAGS.long_memory_fraction <= 1.0:
    raise cli.BadInput(f"--long_memory_fraction must be in [0, 1], got {FLAGS.long_memory_fraction}")
  from hybrid_forcing_jax.world.assets import prepare   # lazy: --help without jax
  from hybrid_forcing_jax.world.codec import PixelCodecConfig
  try:
    lines = prepare(FLAGS.output, FLAGS.num_prompts, FLAGS.seed, PixelCodecConfig(temporal_factor=FLAGS.temporal_factor),
                    FLAGS.long_memory_fraction)
  except FileExistsError as e:   # a folder prepared for another layout or other prompts
    raise cli.BadInput(str(e)) from None
  for line in lines:
    print(f"world.prepare: {line}")
  return 0


if __name__ == "__main__":
  cli.run(main, "world.prepare")
