"""Sample the bidirectional teacher for every prompt and write its ODE trajectories (ODE-init's data).

  python -m hybrid_forcing_jax.make_ode_pairs --config=configs/ode_init.py
  python -m hybrid_forcing_jax.make_ode_pairs --config=configs/ode_init.py:tiny --config.data.prompts=p.txt  # CPU

Per prompt: noise from the key `ode_pairs.seed` folded with the prompt's index (the same whatever the
device count or batch), `ode_pairs.num_steps` Euler steps at `ode_pairs.shift` with CFG on x0 against
`text.negative_prompt`, the trajectory kept at `ode_pairs.keep`. The default shift (5) is the DMD
schedule's, so the kept points sit at the student's timesteps; the peers' scripts used 8
(training_spec.md 1). Records go to array_record shards in `ode_pairs.output_dir`
(training/data/ode_pairs.py); the same command resumes a killed run, skipping finished shards, and
refuses a folder made with another config. Prompts are split over this host's devices (one "data"
mesh axis; the teacher's parameters FSDP-sharded when they do not fit one device); on several hosts
each process takes every process_count-th shard.
"""
from __future__ import annotations

import hashlib
import json
import os

from absl import flags

from hybrid_forcing_jax import cli
from hybrid_forcing_jax.training import teacher_records
from hybrid_forcing_jax.training.teacher_records import Job

FLAGS = flags.FLAGS
cli.define_config_flag("config", None, "Config with an ode_pairs section, e.g. configs/ode_init.py "
                       "(configs/ode_init.py:tiny on a CPU); override keys with --config.section.key=value",
                       "make_ode_pairs")
teacher_records.define_flags()
# Defined in those modules: listed by --help as this command's own.
flags.adopt_module_key_flags(cli)
flags.adopt_module_key_flags(teacher_records)


def prepare(config) -> Job:
  """Check every input before the teacher loads; cli.BadInput names the key, file or folder."""
  from hybrid_forcing_jax.training import teacher
  from hybrid_forcing_jax.training.config import ConfigError, parse
  from hybrid_forcing_jax.training.data.ode_pairs import OdePairWriter
  from hybrid_forcing_jax.training.data.prompts import read_prompts
  try:
    run = parse(config)
  except ConfigError as e:
    raise cli.BadInput(str(e)) from None
  if run.ode_pairs is None:
    raise cli.BadInput(f"config.stage {run.stage!r} has no ode_pairs section (use configs/ode_init.py)")
  p = run.ode_pairs
  try:
    prompts = read_prompts(run.data.prompts)
  except (OSError, ValueError) as e:
    raise cli.BadInput(f"config.data.prompts: {e}") from None
  try:
    timesteps = teacher.kept_timesteps(p.num_steps, p.shift, p.keep)
    writer = OdePairWriter(p.output_dir, identity(run, prompts), num_prompts=len(prompts),
                           records_per_shard=p.records_per_shard, timesteps=timesteps)
  except ValueError as e:
    raise cli.BadInput(str(e)) from None
  return Job(run, prompts, writer, timesteps)


def identity(run, prompts) -> dict:
  """What decides the records, by config key: a folder made with other values is refused."""
  p, t = run.ode_pairs, run.teacher
  return {
      "teacher.preset": t.preset, "teacher.overrides": dict(t.overrides), "teacher.dtype": t.dtype,
      "teacher.checkpoint": os.path.abspath(t.checkpoint) if t.checkpoint else "",
      "ode_pairs.num_steps": p.num_steps, "ode_pairs.shift": p.shift, "ode_pairs.guidance": p.guidance,
      "ode_pairs.keep": list(p.keep), "ode_pairs.seed": p.seed, "ode_pairs.records_per_shard": p.records_per_shard,
      "data.num_frames": run.data.num_frames, "data.latent_hw": list(run.data.latent_hw),
      "data.prompts (sha256 of the prompts)": hashlib.sha256(json.dumps(prompts).encode()).hexdigest(),
      "text.encoder": run.text.encoder, "text.tokenizer": run.text.tokenizer, "text.text_len": run.text.text_len,
      "text.negative_prompt": run.text.negative_prompt,
  }


def start_message(job: Job, pending: list[int]) -> str:
  run, p = job.run, job.run.ode_pairs
  t = run.teacher
  weights = t.checkpoint or "RANDOM weights (teacher.checkpoint is empty)"
  student = [round(float(x), 2) for x in run.stream.timesteps()]
  return (f"make_ode_pairs: teacher {t.preset} ({weights}); {len(job.prompts)} prompts -> "
          f"{job.writer.num_shards} shards in {p.output_dir} ({job.writer.num_shards - len(job.writer.pending())} "
          f"already done; this run writes {len(pending)}).\n"
          f"  {p.num_steps} Euler steps at shift {p.shift}, CFG {p.guidance} on x0 against the negative prompt; "
          f"kept steps {list(p.keep)} at t = {[round(float(x), 2) for x in job.timesteps]}.\n"
          f"  Shift {p.shift} is the student's schedule (stream.shift {run.stream.shift}: t = {student}), so the "
          f"kept points are the timesteps ODE init trains at; the peers' scripts used shift 8, which does not "
          f"line up with DMD's 5 (training_spec.md 1).")


def make_sampler(model, run, mesh, params_sharding):
  """jit(params, prompt_index [B], context [B, Lt, D], negative [Lt, D]) -> bfloat16 [B, K, F, h, w, C]."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P
  from hybrid_forcing_jax.training import sharding
  from hybrid_forcing_jax.training.guidance import text_kv
  from hybrid_forcing_jax.training.teacher import euler_trajectory
  p = run.ode_pairs
  shape = (run.data.num_frames, *run.data.latent_hw, model.config.in_dim)
  base_key = jax.random.key(p.seed)

  def sample(params, prompt_index, context, negative):
    noise = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(base_key, i), shape, jnp.float32))(prompt_index)
    latents = euler_trajectory(model, params, noise, text_kv(model, params, context),
                               text_kv(model, params, negative[None]), num_steps=p.num_steps, shift=p.shift,
                               guidance=p.guidance, keep=p.keep)
    return latents.astype(jnp.bfloat16)

  batch, replicated = sharding.batch_sharding(mesh), NamedSharding(mesh, P())
  return jax.jit(sample, in_shardings=(params_sharding, batch, batch, replicated), out_shardings=batch)


def sample_shards(job: Job, **kwargs) -> dict:
  """teacher_records.sample_shards with this command's sampler (kwargs: batch_per_device, fsdp, max_shards)."""
  return teacher_records.sample_shards(job, make_sampler, start_message, **kwargs)


def main(argv) -> int:
  if FLAGS.config is None:
    raise cli.BadInput("--config is required, e.g. --config=configs/ode_init.py (see --help)")
  teacher_records.check_flags()
  from hybrid_forcing_jax.training.sharding import initialize_distributed
  initialize_distributed()
  job = prepare(FLAGS.config)
  done = sample_shards(job, **teacher_records.flag_values())
  teacher_records.report(job, done, "make_ode_pairs", job.run.ode_pairs.output_dir)
  return 0


if __name__ == "__main__":
  cli.run(main, "make_ode_pairs")
