"""What each training stage adds to the generic loop: its inputs (checked before anything is
written), its dataset of single examples, and its loss.

ode_init: ODE pairs (make_ode_pairs) -> ode_regression_loss on the block-causal student.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable

import grain

from hybrid_forcing_jax.training.config import ConfigError, RunConfig


@dataclasses.dataclass(frozen=True)
class Stage:
  dataset: grain.MapDataset  # unbatched examples without end; the trainer batches and shards them
  loss_fn: Callable          # (params, batch, rng) -> (loss, metrics)


def check_inputs(run: RunConfig) -> None:
  """Refuse a missing input before the run writes anything."""
  from hybrid_forcing_jax.training.data.prompts import read_prompts
  try:
    read_prompts(run.data.prompts)
  except (OSError, ValueError) as e:
    raise ConfigError(f"config.data.prompts: {e}") from None
  if run.stage == "ode_init":
    folder = run.data.ode_pairs
    if not os.path.isdir(folder):
      raise ConfigError(f"config.data.ode_pairs: ODE-pair folder {folder!r} does not exist "
                        "(make it with python -m hybrid_forcing_jax.make_ode_pairs --config=...)")


def ode_init(run: RunConfig, model) -> Stage:
  from hybrid_forcing_jax.training.data.ode_pairs import ode_pair_dataset
  from hybrid_forcing_jax.training.losses.ode import ode_regression_loss
  loss = functools.partial(ode_regression_loss, model=model, chunk_frames=run.stream.chunk_frames,
                           denoising_timesteps=tuple(float(t) for t in run.stream.timesteps()))
  return Stage(dataset=ode_pair_dataset(run), loss_fn=loss)


STAGES = {"ode_init": ode_init}
