"""Precompute the teacher regulariser's targets (phase 2, paper Sec. 3.4) for `regulariser.source="records"`.

  python -m hybrid_forcing_jax.make_teacher_rollouts --config=configs/hybrid.py
  python -m hybrid_forcing_jax.make_teacher_rollouts --config=configs/hybrid.py:tiny --config.data.prompts=p.txt

Per prompt i: the loss window's starting noise for the key fold_in(key(regulariser.seed), i)
(training/rollout.py's window_noise, which the generator's window starts from for that key), then
`regulariser.num_steps` Euler steps at `regulariser.shift` with CFG `regulariser.guidance` on x0 against
`text.negative_prompt`; the final sample goes to `regulariser.records` (training/data/teacher_rollouts.py).
The shards, the resume after a kill, the refusal of a folder made with another config, the teacher's
sharding and the flags are make_ode_pairs' (training/teacher_records.py, the same machinery).
"""
from __future__ import annotations

from absl import flags

from hybrid_forcing_jax import cli
from hybrid_forcing_jax.training import teacher_records
from hybrid_forcing_jax.training.teacher_records import Job

FLAGS = flags.FLAGS
cli.define_config_flag("config", None, "A DMD config with a regulariser section, e.g. configs/hybrid.py "
                       "(configs/hybrid.py:tiny on a CPU); override keys with --config.section.key=value",
                       "make_teacher_rollouts")
teacher_records.define_flags()
# Defined in those modules: listed by --help as this command's own.
flags.adopt_module_key_flags(cli)
flags.adopt_module_key_flags(teacher_records)


def prepare(config) -> Job:
  """Check every input before the teacher loads; cli.BadInput names the key, file or folder."""
  return teacher_records.prepare(config, section="regulariser", example_config="configs/hybrid.py",
                                 make_writer=make_writer)


def make_writer(run, prompts):
  from hybrid_forcing_jax.training.data import teacher_rollouts
  from hybrid_forcing_jax.training.data.ode_pairs import OdePairWriter
  r = run.regulariser
  writer = OdePairWriter(r.records, teacher_rollouts.identity(run, prompts), num_prompts=len(prompts),
                         records_per_shard=r.records_per_shard, timesteps=teacher_rollouts.TIMESTEPS,
                         config_key=teacher_rollouts.CONFIG_KEY)
  return writer, teacher_rollouts.TIMESTEPS


def start_message(job: Job, pending: list[int]) -> str:
  run, r = job.run, job.run.regulariser
  weights = run.teacher.checkpoint or "RANDOM weights (teacher.checkpoint is empty)"
  return (f"make_teacher_rollouts: teacher {run.teacher.preset} ({weights}); {len(job.prompts)} prompts -> "
          f"{job.writer.num_shards} shards in {r.records} ({job.writer.num_shards - len(job.writer.pending())} "
          f"already done; this run writes {len(pending)}).\n"
          f"  {r.num_steps} Euler steps at shift {r.shift}, CFG {r.guidance} (u + g (c - u)) on x0 against the "
          f"negative prompt, from the window noise of key fold_in(key({r.seed}), prompt index).")


def make_sampler(model, run, mesh, params_sharding):
  """jit(params, prompt_index [B], context [B, Lt, D], negative [Lt, D]) -> bfloat16 [B, 1, F, h, w, C]."""
  import jax
  import jax.numpy as jnp
  from hybrid_forcing_jax.training.data.teacher_rollouts import noise_key
  from hybrid_forcing_jax.training.guidance import text_kv
  from hybrid_forcing_jax.training.rollout import window_noise
  from hybrid_forcing_jax.training.teacher import euler_trajectory
  r = run.regulariser

  def sample(params, prompt_index, context, negative):
    keys = jax.vmap(lambda i: noise_key(r.seed, i))(prompt_index)
    noise = window_noise(keys, run.stream, loss_frames=run.data.num_frames, latent_hw=tuple(run.data.latent_hw),
                         channels=model.config.in_dim)
    latents = euler_trajectory(model, params, noise, text_kv(model, params, context),
                               text_kv(model, params, negative[None]), num_steps=r.num_steps, shift=r.shift,
                               guidance=r.guidance, keep=(r.num_steps,))
    return latents.astype(jnp.bfloat16)

  return teacher_records.jit_sampler(sample, mesh, params_sharding)


def main(argv) -> int:
  del argv
  return teacher_records.main(FLAGS.config, command="make_teacher_rollouts", prepare_job=prepare,
                              make_sampler=make_sampler, describe=start_message,
                              folder_of=lambda run: run.regulariser.records)


if __name__ == "__main__":
  cli.run(main, "make_teacher_rollouts")
