"""The training loop around a stage: checks, state, sharding, checkpoints, metrics, export.

`prepare` checks every input and refuses (ConfigError, naming the key / file / folder) before anything
is written; `Job.run` resumes from the last checkpoint if the workdir has one and trains to
`train.steps`.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import grain
import jax
import jax.numpy as jnp
import numpy as np

from hybrid_forcing_jax.paths import ensure_writable_folder
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
    ensure_writable_folder(workdir)
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
    optimizer = optim.make_optimizer(run.optim)
    stage = stages.STAGES[run.stage](run, model, optimizer)
    critic_opt_state = None if stage.critic is None else stage.critic_optimizer.init(stage.critic)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                       ema=optim.init_ema(params), rng=jax.random.key_data(jax.random.key(run.train.seed)),
                       critic=stage.critic, critic_opt_state=critic_opt_state)
    state_shardings = sharding.train_state_shardings(self.mesh, optimizer, state, stage.critic_optimizer)
    batch_sharding = sharding.batch_sharding(self.mesh)
    frozen_shardings = None if stage.frozen is None else stage.frozen_shardings(self.mesh)
    frozen = None if stage.frozen is None else jax.device_put(stage.frozen, frozen_shardings)
    step_fns = [steps.jit_train_step(u.step_fn, state_shardings, batch_sharding, frozen_shardings)
                for u in stage.updates]
    return Parts(model=model, updates=stage.updates, step_fns=step_fns, frozen=frozen,
                 state=jax.device_put(state, state_shardings), batch_sharding=batch_sharding)

  def run(self, should_stop: Callable[[], bool] = lambda: False) -> bool:
    """Train to train.steps; -> True when done, False when stopped early by should_stop (after a save).

    A step is one loop iteration: every update due at it (stages.Update.every) runs once, in order;
    for DMD that is a generator update every dmd.generator_every steps, then one critic update, so
    steps count critic updates (as Self-Forcing counts them)."""
    run, t = self.config, self.config.train
    parts = self.build()
    state = parts.state
    local_batch = run.data.batch_size // jax.process_count()
    iterators = [batch_iterator(u.dataset, local_batch, run.data.num_workers) for u in parts.updates]
    manager = checkpointing.make_manager(self.workdir, keep_last=t.keep_last, keep_every=t.keep_every)
    # latest[i]: the last metrics of update i with the step it ran at; saved with the checkpoint so
    # that a resumed run logs what an uninterrupted one does, also between sparse updates.
    latest = [{} for _ in parts.updates]
    restored = checkpointing.restore_latest(manager, state)
    if restored is not None:
      state, data = restored
      for it, position in zip(iterators, data["iterators"]):
        it.set_state(position)
      latest = data["latest_metrics"]
    start = int(state.step)
    if start:
      print(f"train: resuming from step {start} ({self.workdir})", flush=True)
    # From host memory: a buffer of its own, not one of the state's (which each step donates).
    base_key = jax.random.wrap_key_data(np.asarray(jax.device_get(state.rng)))
    keys = [jax.random.fold_in(base_key, i) for i in range(len(parts.updates))] if len(parts.updates) > 1 \
        else [base_key]
    frozen = () if parts.frozen is None else (parts.frozen,)
    log = metrics.MetricsLog(self.workdir, start_step=start, total_steps=t.steps)
    tick, ticked_step = time.perf_counter(), start
    step = start

    def data_state():
      # copies: the checkpoint is written in the background while the loop goes on
      return {"iterators": [it.get_state() for it in iterators], "latest_metrics": [on_host(m) for m in latest]}

    try:
      while step < t.steps:
        if should_stop():
          checkpointing.save(manager, step, state, data_state(), force=True)
          manager.wait_until_finished()
          print(f"train: stopped by SIGTERM at step {step}; saved, resume with the same command", flush=True)
          return False
        for i, (update, step_fn, it) in enumerate(zip(parts.updates, parts.step_fns, iterators)):
          if step % update.every == 0:
            batch = jax.make_array_from_process_local_data(parts.batch_sharding, next(it))
            state, update_metrics = step_fn(state, batch, keys[i], *frozen)
            # Device arrays: read on the host only when logged or saved, so the loop does not wait for
            # each step to finish before queueing the next one.
            latest[i] = {"at_step": step + 1, **update_metrics}
        step += 1
        log.advance()
        if step % t.log_every == 0 or step == t.steps:
          values = logged_metrics(parts.updates, [on_host(m) for m in latest])
          now = time.perf_counter()
          step_time = (now - tick) / (step - ticked_step)
          tick, ticked_step = now, step
          log.write(step, {**values, "step_time_s": step_time, "samples_per_s": run.data.batch_size / step_time,
                           **metrics.device_memory()})
        if step % t.checkpoint_every == 0 or step == t.steps:
          checkpointing.save(manager, step, state, data_state())
        if (t.export_every and step % t.export_every == 0) or step == t.steps:
          folder = checkpointing.export_generator(self.workdir, step, parts.model.config, state.ema)
          print(f"train: exported the EMA generator at step {step} to {folder}", flush=True)
      return True
    finally:
      manager.wait_until_finished()
      manager.close()
      log.close()


def on_host(metrics: dict) -> dict:
  """A copy of an update's metrics with its (device) scalars as Python numbers."""
  return {k: v if k == "at_step" else float(v) for k, v in jax.device_get(metrics).items()}


def logged_metrics(updates, latest) -> dict[str, float]:
  """One record: each update's latest metrics under its name, "<name>/<metric>" (a metric already named
  "<name>_x" becomes "<name>/x"), plus "<name>/at_step", the step it last ran at, for updates that do not
  run every step. An update named "" logs its metrics as they are."""
  record = {}
  for update, values in zip(updates, latest):
    for key, value in values.items():
      if key == "at_step" and update.every == 1:
        continue
      if update.name:
        key = f"{update.name}/{key.removeprefix(update.name + '_')}"
      record[key] = value
  return record


@dataclasses.dataclass(frozen=True)
class Parts:
  """What a run is built from: the model, its stage's updates and their jitted steps, the frozen
  parameters (placed once), the sharded state."""
  model: object
  updates: tuple
  step_fns: list
  frozen: object
  state: TrainState
  batch_sharding: jax.sharding.NamedSharding


def batch_iterator(dataset: grain.MapDataset, local_batch: int, num_workers: int):
  """This process's slice of the examples, batched; a grain iterator whose get_state() / set_state()
  is the data position saved with each checkpoint."""
  ds = dataset[jax.process_index()::jax.process_count()].batch(local_batch, drop_remainder=True)
  # Elements are whole batches (an ODE-pair batch of 32 is 660 MB in float32): grain's default read-ahead
  # of 500 elements, which `iter(MapDataset)` also uses, filled a 128 GB host in 50 s. Read ahead only as
  # many batches as there are threads making them (one with none).
  options = grain.ReadOptions(num_threads=num_workers, prefetch_buffer_size=max(num_workers, 1))
  return iter(ds.to_iter_dataset(options))
