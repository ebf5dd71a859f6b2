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
import numpy as np

from hybrid_forcing_jax.training.config import ConfigError, RunConfig
from hybrid_forcing_jax.training.data.ode_pairs import ode_pair_dataset, read_manifest
from hybrid_forcing_jax.training.data.prompts import PromptEmbeddings, read_prompts
from hybrid_forcing_jax.training.losses.ode import ode_regression_loss


@dataclasses.dataclass(frozen=True)
class Stage:
  dataset: grain.MapDataset  # unbatched examples without end; the trainer batches and shards them
  loss_fn: Callable          # (params, batch, rng) -> (loss, metrics)


def check_inputs(run: RunConfig) -> None:
  """Refuse a missing or mismatched input before the run writes anything."""
  try:
    read_prompts(run.data.prompts)
  except (OSError, ValueError) as e:
    raise ConfigError(f"config.data.prompts: {e}") from None
  if run.stage == "ode_init":
    folder = run.data.ode_pairs
    if not os.path.isdir(folder):
      raise ConfigError(f"config.data.ode_pairs: ODE-pair folder {folder!r} does not exist "
                        "(make it with python -m hybrid_forcing_jax.make_ode_pairs --config=...)")
    try:
      stored = read_manifest(folder)["timesteps"][:-1]
    except OSError as e:
      raise ConfigError(f"config.data.ode_pairs: {e}") from None
    student = run.stream.timesteps()
    if len(stored) != len(student) or not np.allclose(stored, student, atol=1e-3):
      raise ConfigError(f"config.data.ode_pairs: {folder!r} holds trajectory points at t = "
                        f"{np.round(stored, 2).tolist()}, the student's timesteps are {np.round(student, 2).tolist()}")


def ode_init(run: RunConfig, model) -> Stage:
  embeddings = PromptEmbeddings(read_prompts(run.data.prompts), run.text, progress=True)
  loss = functools.partial(ode_regression_loss, model=model, chunk_frames=run.stream.chunk_frames,
                           denoising_timesteps=tuple(float(t) for t in run.stream.timesteps()))
  return Stage(dataset=ode_pair_dataset(run.data.ode_pairs, embeddings, seed=run.data.seed), loss_fn=loss)


STAGES = {"ode_init": ode_init}
