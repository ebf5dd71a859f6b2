"""The world's captions as prompts: every caption the grammar can say (the flow_matching stage embeds
them once), and prompts files of training captions for make_ode_pairs and DMD.

    captions_file("data/world/prompts.txt", n=1000, seed=0)   # captions of train examples 0..999
"""
from __future__ import annotations

import itertools
import os

from hybrid_forcing_jax.world import grammar
from hybrid_forcing_jax.world.dataset import world_scene
from hybrid_forcing_jax.world.scene import WorldConfig


def all_captions() -> list[str]:
  """Every caption the grammar produces (each optional part said or not), sorted: 840 with the default
  palette. Held-out combinations are among them; the train split just never says all three."""
  options = lambda names: [None, *names]  # noqa: E731  (None: the part is left out)
  return sorted({grammar.caption(shape, motion, colour=colour, direction=direction, background=background)
                 for shape, motion, colour, direction, background in itertools.product(
                     grammar.SHAPES, grammar.MOTIONS, options(grammar.COLOURS), options(grammar.DIRECTIONS),
                     options(grammar.BACKGROUNDS))})


def training_captions(n: int, seed: int, config: WorldConfig = WorldConfig()) -> list[str]:
  """The captions of examples 0..n-1 of the train split at `seed`: the training distribution, held-out
  combinations excluded, repeats as often as the world draws them."""
  return [world_scene(config, "train", seed, i).caption for i in range(n)]


def captions_file(path: str, n: int, seed: int, config: WorldConfig = WorldConfig()) -> None:
  """Write `training_captions(n, seed, config)`, one a line, to `path` (written whole, then renamed in)."""
  if n < 1:
    raise ValueError(f"captions_file: n must be >= 1, got {n}")
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  scratch = f"{path}.tmp-{os.getpid()}"
  with open(scratch, "w", encoding="utf-8") as f:
    f.write("\n".join(training_captions(n, seed, config)) + "\n")
  os.replace(scratch, path)
