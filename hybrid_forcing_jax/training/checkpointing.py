"""Training checkpoints (orbax) and the run's metadata, in the workdir:

  workdir/run.json            stage + generator architecture; a later run must match it
  workdir/checkpoints/<step>/ state (TrainState, sharded) + data (the data iterator's position)
  workdir/export/<step>/      the EMA generator as a converted folder (model.safetensors + config.json)

Checkpoints are written asynchronously; orbax commits a step only once it is complete, so a run
killed mid-write resumes from the previous one. Kept: the last `keep_last` and every `keep_every`-th.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from hybrid_forcing_jax import dit
from hybrid_forcing_jax.checkpoint import flatten, save_checkpoint
from hybrid_forcing_jax.config import WanConfig
from hybrid_forcing_jax.training.config import ConfigError

RUN_FILE = "run.json"
CHECKPOINT_DIR = "checkpoints"
EXPORT_DIR = "export"


def check_run_metadata(workdir: str, meta: dict) -> bool:
  """Compare with the workdir's run.json; -> True when the workdir is new (run.json to be written).
  A workdir made by another stage or architecture is refused, naming both."""
  path = os.path.join(workdir, RUN_FILE)
  if not os.path.exists(path):
    if os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR)):
      raise ConfigError(f"{workdir}: holds checkpoints but no {RUN_FILE}; refusing to guess what they are")
    return True
  with open(path) as f:
    old = json.load(f)
  for key in ("stage", "model"):
    if old.get(key) != meta[key]:
      raise ConfigError(f"{workdir}: holds a run of {key} {_describe(old.get(key))}, this config asks for "
                        f"{_describe(meta[key])}; use another --workdir")
  return False


def write_run_metadata(workdir: str, meta: dict) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(workdir, RUN_FILE), "w") as f:
      json.dump(meta, f, indent=2, sort_keys=True)


def _describe(value) -> str:
  if isinstance(value, dict):
    return json.dumps(value, sort_keys=True)
  return repr(value)


def make_manager(workdir: str, *, keep_last: int, keep_every: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep_last, keep_period=keep_every or None,
                                         enable_async_checkpointing=True, create=True)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)), options=options)


def save(manager: ocp.CheckpointManager, step: int, state, data_position: dict, *, force: bool = False) -> None:
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             data=ocp.args.JsonSave(data_position)), force=force)


def restore_latest(manager: ocp.CheckpointManager, state):
  """-> (state, data_position) of the latest complete checkpoint, or None when there is none. `state`
  gives the structure, shapes and shardings to restore into."""
  step = manager.latest_step()
  if step is None:
    return None
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                           data=ocp.args.JsonRestore()))
  return restored.state, restored.data


def export_generator(workdir: str, step: int, config: WanConfig, params) -> str:
  """Write `params` (the EMA generator) as a converted checkpoint folder that `sample --dit=` loads;
  storage dtypes as the converter writes them (bf16 matmul weights, fp32 norms and modulation)."""
  folder = os.path.join(workdir, EXPORT_DIR, f"{step:08d}")
  storage = flatten(dit.param_shapes(config))
  # Gathered from every process (the EMA is sharded over the mesh); cast on the devices first.
  flat = {name: np.asarray(multihost_utils.process_allgather(x.astype(storage[name].dtype), tiled=True))
          for name, x in flatten(params).items()}
  if jax.process_index() == 0:
    save_checkpoint(folder, "wan_dit", config, flat)
  return folder
