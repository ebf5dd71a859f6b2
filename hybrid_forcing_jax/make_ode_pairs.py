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
  return teacher_records.prepare(config, section="ode_pairs", example_config="configs/ode_init.py",
                                 make_writer=make_writer)


def make_writer(run, prompts):
  from hybrid_forcing_jax.training import teacher
  from hybrid_forcing_jax.training.data.ode_pairs import OdePairWriter
  p = run.ode_pairs
  timesteps = teacher.kept_timesteps(p.num_steps, p.shift, p.keep)
  writer = OdePairWriter(p.output_dir, identity(run, prompts), num_prompts=len(prompts),
                         records_per_shard=p.records_per_shard, timesteps=timesteps)
  return writer, timesteps


def identity(run, prompts) -> dict:
  """What decides the records, by config key: a folder made with other values is refused."""
  p = run.ode_pairs
  return teacher_records.identity(run, prompts, {
      "ode_pairs.num_steps": p.num_steps, "ode_pairs.shift": p.shift, "ode_pairs.guidance": p.guidance,
      "ode_pairs.keep": list(p.keep), "ode_pairs.seed": p.seed, "ode_pairs.records_per_shard": p.records_per_shard})


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

  return teacher_records.jit_sampler(sample, mesh, params_sharding)


def sample_shards(job: Job, **kwargs) -> dict:
  """teacher_records.sample_shards with this command's sampler (kwargs: batch_per_device, fsdp, max_shards)."""
  return teacher_records.sample_shards(job, make_sampler, start_message, **kwargs)


def main(argv) -> int:
  del argv
  return teacher_records.main(FLAGS.config, command="make_ode_pairs", prepare_job=prepare, make_sampler=make_sampler,
                              describe=start_message, folder_of=lambda run: run.ode_pairs.output_dir)


if __name__ == "__main__":
  cli.run(main, "make_ode_pairs")
