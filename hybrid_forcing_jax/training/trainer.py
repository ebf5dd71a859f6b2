"""The training loop around a stage: checks, state, sharding, checkpoints, metrics, export.

`prepare` checks every input and refuses (ConfigError, naming the key / file / folder) before anything
is written; `Job.run` resumes from the last checkpoint if the workdir has one and trains to
`train.steps`.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

import grain
import jax
import jax.numpy as jnp
import numpy as np

from hybrid_forcing_jax import dit
from hybrid_forcing_jax.training import builders, checkpointing, metrics, optim, sharding, stages, steps
from hybrid_forcing_jax.training.config import ConfigError, RunConfig, parse
from hybrid_forcing_jax.training.state import TrainState

__all__ = ["ConfigError", "Job", "prepare"]


def prepare(config, workdir: str) -> "Job":
  run = parse(config)
  stages.check_inputs(run)
  try:
    mesh = sharding.make_mesh(run.train.mesh.data, run.train.mesh.fsdp)
  except ValueError as e:
    raise ConfigError(f"config.{e}") from None
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if run.data.batch_size % shards:
    raise ConfigError(f"config.data.batch_size {run.data.batch_size} is not divisible by the data-parallel size "
                      f"{shards} (mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']})")
  if run.data.batch_size % jax.process_count():
    raise ConfigError(f"config.data.batch_size {run.data.batch_size} is not divisible by the "
                      f"{jax.process_count()} processes")
  meta = run_metadata(run)
  new_run = checkpointing.check_run_metadata(workdir, meta)
  check_workdir(workdir)
  if new_run:
    checkpointing.write_run_metadata(workdir, meta)
  return Job(run, workdir, mesh)


def check_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write-probe-{os.getpid()}")
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f"--workdir={workdir}: not a writable folder ({e.strerror})") from None


def run_metadata(run: RunConfig) -> dict:
  """What a workdir's checkpoints depend on: the stage and the generator's architecture."""
  return {"stage": run.stage, "model": builders.wan_config(run.model).to_dict()}


@dataclasses.dataclass
class Job:
  config: RunConfig
  workdir: str
  mesh: jax.sharding.Mesh

  def build(self) -> "Parts":
    run = self.config
    model, params = builders.build_dit(run.model, seed=run.train.seed, param_dtype=jnp.float32)
    stage = stages.STAGES[run.stage](run, model)
    optimizer = optim.make_optimizer(run.optim)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                       ema=jax.tree.map(jnp.copy, params), rng=jax.random.key_data(jax.random.key(run.train.seed)))
    state_shardings = sharding.train_state_shardings(self.mesh, optimizer, state)
    batch_sharding = sharding.batch_sharding(self.mesh)
    train_step = steps.make_train_step(stage.loss_fn, optimizer, ema_decay=run.optim.ema_decay,
                                       ema_start=run.optim.ema_start,
                                       # the model's storage dtypes: bf16 matmuls, float32 norms/modulation
                                       compute_dtype=dit.param_shapes(model.config, model.param_dtype))
    return Parts(model=model, dataset=stage.dataset, state=jax.device_put(state, state_shardings),
                 step_fn=steps.jit_train_step(train_step, state_shardings, batch_sharding),
                 batch_sharding=batch_sharding)

  def run(self, should_stop: Callable[[], bool] = lambda: False) -> bool:
    """Train to train.steps; -> True when done, False when stopped early by should_stop (after a save)."""
    run, t = self.config, self.config.train
    parts = self.build()
    state = parts.state
    batches = batch_iterator(parts.dataset, run.data.batch_size // jax.process_count(), run.data.num_workers)
    manager = checkpointing.make_manager(self.workdir, keep_last=t.keep_last, keep_every=t.keep_every)
    restored = checkpointing.restore_latest(manager, state)
    if restored is not None:
      state, position = restored
      batches.set_state(position)
    start = int(state.step)
    if start:
      print(f"train: resuming from step {start} ({self.workdir})", flush=True)
    # From host memory: a buffer of its own, not one of the state's (which each step donates).
    base_key = jax.random.wrap_key_data(np.asarray(jax.device_get(state.rng)))
    log = metrics.MetricsLog(self.workdir, start_step=start, total_steps=t.steps)
    tick, ticked_step = time.perf_counter(), start
    step = start
    try:
      while step < t.steps:
        if should_stop():
          checkpointing.save(manager, step, state, batches.get_state(), force=True)
          manager.wait_until_finished()
          print(f"train: stopped by SIGTERM at step {step}; saved, resume with the same command", flush=True)
          return False
        batch = jax.make_array_from_process_local_data(parts.batch_sharding, next(batches))
        state, step_metrics = parts.step_fn(state, batch, base_key)
        step += 1
        log.advance()
        if step % t.log_every == 0 or step == t.steps:
          values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
          now = time.perf_counter()
          step_time = (now - tick) / (step - ticked_step)
          tick, ticked_step = now, step
          log.write(step, {**values, "step_time_s": step_time, "samples_per_s": run.data.batch_size / step_time,
                           **metrics.device_memory()})
        if step % t.checkpoint_every == 0 or step == t.steps:
          checkpointing.save(manager, step, state, batches.get_state())
        if (t.export_every and step % t.export_every == 0) or step == t.steps:
          folder = checkpointing.export_generator(self.workdir, step, parts.model.config, state.ema)
          print(f"train: exported the EMA generator at step {step} to {folder}", flush=True)
      return True
    finally:
      manager.wait_until_finished()
      manager.close()
      log.close()


@dataclasses.dataclass(frozen=True)
class Parts:
  """What a run is built from: the model, its stage's examples, the sharded state and the jitted step."""
  model: object
  dataset: grain.MapDataset
  state: TrainState
  step_fn: Callable
  batch_sharding: jax.sharding.NamedSharding


def batch_iterator(dataset: grain.MapDataset, local_batch: int, num_workers: int):
  """This process's slice of the examples, batched; a grain iterator whose get_state() / set_state()
  is the data position saved with each checkpoint."""
  ds = dataset[jax.process_index()::jax.process_count()].batch(local_batch, drop_remainder=True)
  if num_workers:
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_workers)))
  return iter(ds)
