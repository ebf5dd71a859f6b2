"""What each training stage adds to the generic loop: its inputs (checked before anything is
written) and its updates, each with its dataset of single examples and its step.

ode_init: ODE pairs (make_ode_pairs) -> ode_regression_loss on the block-causal student, one update.
dmd: a generator update every `dmd.generator_every` critic updates, the frozen teacher (dmd_stage.py).
flow_matching: world videos -> flow_matching_loss on the bidirectional teacher, one update
(flow_matching_stage.py).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import grain
import numpy as np

from hybrid_forcing_jax import dit
from hybrid_forcing_jax.training import steps
from hybrid_forcing_jax.training.config import ConfigError, RunConfig
from hybrid_forcing_jax.training.data.ode_pairs import ode_pair_dataset, read_manifest
from hybrid_forcing_jax.training.data.prompts import PromptEmbeddings, read_prompts
from hybrid_forcing_jax.training.losses.ode import ode_regression_loss


@dataclasses.dataclass(frozen=True)
class Update:
  """One jitted update of the train state. In loop step s (0-based) the updates run in order, each
  when s % every == 0, each on a batch of its own dataset and with a key stream of its own."""
  name: str                  # its metrics are logged as "<name>/<metric>" ("" = unprefixed)
  dataset: grain.MapDataset  # unbatched examples without end; the trainer batches and shards them
  step_fn: Callable          # (state, batch, rng[, frozen]) -> (state, metrics), unjitted; frozen: Stage.frozen
  every: int = 1


@dataclasses.dataclass(frozen=True)
class Stage:
  updates: tuple             # of Update
  frozen: Any = None         # parameters the updates read and none trains (DMD's teacher); not checkpointed
  frozen_shardings: Callable | None = None   # mesh -> shardings of `frozen`
  critic: Any = None         # DMD's fake score (float32 masters) and its optimiser, in the TrainState
  critic_optimizer: Any = None


def check_inputs(run: RunConfig) -> None:
  """Refuse a missing or mismatched input before the run writes anything."""
  if run.stage == "flow_matching":   # videos, no prompts file
    from hybrid_forcing_jax.training import flow_matching_stage   # imports Update and Stage from here
    flow_matching_stage.check_inputs(run)
    return
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
  if run.stage == "dmd":
    from hybrid_forcing_jax.training import dmd_stage   # imports Update and Stage from here
    dmd_stage.check_inputs(run)


def ode_init(run: RunConfig, model, optimizer) -> Stage:
  embeddings = PromptEmbeddings(read_prompts(run.data.prompts), run.text, progress=True)
  loss = functools.partial(ode_regression_loss, model=model, chunk_frames=run.stream.chunk_frames,
                           denoising_timesteps=tuple(float(t) for t in run.stream.timesteps()))
  train_step = steps.make_train_step(loss, optimizer, ema_decay=run.optim.ema_decay, ema_start=run.optim.ema_start,
                                     # the model's storage dtypes: bf16 matmuls, float32 norms/modulation
                                     compute_dtype=dit.param_shapes(model.config, model.param_dtype))
  dataset = ode_pair_dataset(run.data.ode_pairs, embeddings, seed=run.data.seed)
  return Stage(updates=(Update("", dataset, train_step),))


def dmd(run: RunConfig, model, optimizer) -> Stage:
  from hybrid_forcing_jax.training import dmd_stage
  return dmd_stage.build(run, model, optimizer)


def flow_matching(run: RunConfig, model, optimizer) -> Stage:
  from hybrid_forcing_jax.training import flow_matching_stage
  return flow_matching_stage.build(run, model, optimizer)


STAGES = {"ode_init": ode_init, "dmd": dmd, "flow_matching": flow_matching}
