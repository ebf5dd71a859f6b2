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

import dataclasses
import hashlib
import json
import os
import sys
import time

from absl import flags

from hybrid_forcing_jax import cli

FLAGS = flags.FLAGS
cli.define_config_flag("config", None, "Config with an ode_pairs section, e.g. configs/ode_init.py "
                       "(configs/ode_init.py:tiny on a CPU); override keys with --config.section.key=value",
                       "make_ode_pairs")
flags.DEFINE_integer("batch_per_device", 1, "Prompts per device per teacher call (the result does not depend on it)")
flags.DEFINE_integer("fsdp", 0, "Shard the teacher's parameters over this many devices; 0 = only when a replica "
                     "would take more than half a device's memory")
flags.DEFINE_integer("max_shards", None, "Write at most this many shards, then stop (run again to continue)")


@dataclasses.dataclass
class Job:
  """Everything checked and loaded: what `sample_shards` needs."""
  run: object            # training.config.RunConfig
  prompts: list
  writer: object         # OdePairWriter
  timesteps: object      # of the kept latents


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


def teacher_mesh(params, fsdp: int):
  """A (data, fsdp) mesh over this process's devices; fsdp 0 picks 1 unless a replica of `params` would
  take more than half a device's memory, then the fewest devices that bring it under."""
  import jax
  from hybrid_forcing_jax.training import sharding
  devices = jax.local_devices()
  if fsdp == 0:
    limit = (devices[0].memory_stats() or {}).get("bytes_limit")
    size = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(params))
    fsdp = next((n for n in range(1, len(devices) + 1) if len(devices) % n == 0
                 and (not limit or size / n < limit / 2)), len(devices))
  if fsdp < 1 or len(devices) % fsdp:
    raise cli.BadInput(f"--fsdp={fsdp} does not divide this host's {len(devices)} devices")
  return sharding.make_mesh(-1, fsdp, devices)


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


def sample_shards(job: Job, *, batch_per_device: int = 1, fsdp: int = 0, max_shards: int | None = None) -> dict:
  """Write this process's unfinished shards (at most `max_shards`); returns timing numbers."""
  import jax
  import numpy as np
  from tqdm import tqdm
  from hybrid_forcing_jax.training import builders, sharding
  from hybrid_forcing_jax.training.data.prompts import PromptEmbeddings, negative_context
  run = job.run
  pending = job.writer.pending(jax.process_index(), jax.process_count())[:max_shards]
  print(start_message(job, pending), file=sys.stderr, flush=True)
  if not pending:
    return dict(prompts=0, seconds=0.0)
  try:
    # Embeddings first: the umT5 is gone before the teacher takes the device's memory.
    embeddings = PromptEmbeddings(job.prompts, run.text, progress=True)
    negative = negative_context(run)
    model, params = builders.build_dit(run.teacher)
  except (OSError, ValueError) as e:
    raise cli.BadInput(str(e)) from None
  if embeddings.dim != model.config.text_dim:
    raise cli.BadInput(f"text.encoder gives {embeddings.dim}-dim embeddings, teacher {run.teacher.preset} expects "
                       f"text_dim {model.config.text_dim}")
  mesh = teacher_mesh(params, fsdp)
  params_sharding = sharding.param_shardings(mesh, params)
  params = jax.device_put(params, params_sharding)
  sampler = make_sampler(model, run, mesh, params_sharding)
  batch = batch_per_device * mesh.size
  total = sum(len(job.writer.shard_range(s)) for s in pending)
  times = []
  with tqdm(total=total, unit="prompt", desc="ODE pairs", dynamic_ncols=True) as bar:
    for shard in pending:
      indices = list(job.writer.shard_range(shard))
      with job.writer.open_shard(shard) as out:
        for start in range(0, len(indices), batch):
          begin = time.perf_counter()
          real = indices[start:start + batch]
          padded = real + real[-1:] * (batch - len(real))   # one program for every batch
          context = np.stack([embeddings[i] for i in padded])
          latents = np.asarray(sampler(params, np.asarray(padded, np.int32), context, negative))
          for i, row in zip(real, latents):
            out.write(job.prompts[i], i, row)
          times.append((time.perf_counter() - begin, len(real)))
          bar.update(len(real))
      bar.set_postfix(shard=shard)
  seconds, prompts = sum(t for t, _ in times), sum(n for _, n in times)
  later_s, later_n = sum(t for t, _ in times[1:]), sum(n for _, n in times[1:])
  return dict(prompts=prompts, seconds=seconds, later_s_per_prompt=later_s / later_n if later_n else None,
              shards=len(pending))


def main(argv) -> int:
  if FLAGS.config is None:
    raise cli.BadInput("--config is required, e.g. --config=configs/ode_init.py (see --help)")
  if FLAGS.batch_per_device < 1:
    raise cli.BadInput(f"--batch_per_device must be >= 1, got {FLAGS.batch_per_device}")
  if FLAGS.max_shards is not None and FLAGS.max_shards < 0:
    raise cli.BadInput(f"--max_shards must be >= 0, got {FLAGS.max_shards}")
  from hybrid_forcing_jax.training.sharding import initialize_distributed
  initialize_distributed()
  job = prepare(FLAGS.config)
  done = sample_shards(job, batch_per_device=FLAGS.batch_per_device, fsdp=FLAGS.fsdp, max_shards=FLAGS.max_shards)
  if done["prompts"]:
    after = done["later_s_per_prompt"]
    print(f"make_ode_pairs: wrote {done['shards']} shards, {done['prompts']} prompts in {done['seconds']:.1f} s: "
          f"{done['seconds'] / done['prompts']:.3f} s per prompt (the first batch includes compilation"
          + (f"; {after:.3f} s per prompt after it)" if after else ")"), file=sys.stderr)
  left = job.writer.pending()
  print(f"make_ode_pairs: {job.writer.num_shards - len(left)} of {job.writer.num_shards} shards done in "
        f"{job.run.ode_pairs.output_dir}" + (f"; run again to write the other {len(left)}" if left else ""),
        file=sys.stderr)
  return 0


if __name__ == "__main__":
  cli.run(main, "make_ode_pairs")
