"""The teacher-sampling machinery of the commands that write teacher records (make_ode_pairs: ODE pairs;
make_teacher_rollouts: the regulariser's targets): their shared flags, the teacher's mesh, the loop
that fills a writer's unfinished shards, the closing report. Each command brings its own sampler.
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


def define_flags() -> None:
  """The sampling flags of a teacher-records command (called by each command's module; allow_override: both
  commands can be imported into one process)."""
  flags.DEFINE_integer("batch_per_device", 1, "Prompts per device per teacher call (the result does not depend on it)",
                       allow_override=True)
  flags.DEFINE_integer("fsdp", 0, "Shard the teacher's parameters over this many devices; 0 = only when a replica "
                       "would take more than half a device's memory", allow_override=True)
  flags.DEFINE_integer("max_shards", None, "Write at most this many shards, then stop (run again to continue)",
                       allow_override=True)


def check_flags() -> None:
  if FLAGS.batch_per_device < 1:
    raise cli.BadInput(f"--batch_per_device must be >= 1, got {FLAGS.batch_per_device}")
  if FLAGS.max_shards is not None and FLAGS.max_shards < 0:
    raise cli.BadInput(f"--max_shards must be >= 0, got {FLAGS.max_shards}")


def flag_values() -> dict:
  return dict(batch_per_device=FLAGS.batch_per_device, fsdp=FLAGS.fsdp, max_shards=FLAGS.max_shards)


def prepare(config, *, section: str, example_config: str, make_writer) -> "Job":
  """Check every input before the teacher loads (cli.BadInput names the key, file or folder): the config,
  its `section` (the command's own: ode_pairs / regulariser), the prompts, the output folder.
  make_writer(run, prompts) -> (writer, timesteps of the kept latents); a ValueError is bad input."""
  from hybrid_forcing_jax.training.config import ConfigError, parse
  from hybrid_forcing_jax.training.data.prompts import read_prompts
  try:
    run = parse(config)
  except ConfigError as e:
    raise cli.BadInput(str(e)) from None
  if getattr(run, section) is None:
    raise cli.BadInput(f"config.stage {run.stage!r} has no {section} section (use {example_config})")
  try:
    prompts = read_prompts(run.data.prompts)
  except (OSError, ValueError) as e:
    raise cli.BadInput(f"config.data.prompts: {e}") from None
  try:
    writer, timesteps = make_writer(run, prompts)
  except ValueError as e:
    raise cli.BadInput(str(e)) from None
  return Job(run, prompts, writer, timesteps)


def identity(run, prompts, section: dict) -> dict:
  """What decides a command's records, by config key: the teacher, the video size, the prompts and their
  text encoding, plus the command's own `section` keys. A folder made with other values is refused."""
  t = run.teacher
  return {
      "teacher.preset": t.preset, "teacher.overrides": dict(t.overrides), "teacher.dtype": t.dtype,
      "teacher.checkpoint": os.path.abspath(t.checkpoint) if t.checkpoint else "",
      **section,
      "data.num_frames": run.data.num_frames, "data.latent_hw": list(run.data.latent_hw),
      "data.prompts (sha256 of the prompts)": hashlib.sha256(json.dumps(prompts).encode()).hexdigest(),
      "text.encoder": run.text.encoder, "text.tokenizer": run.text.tokenizer, "text.text_len": run.text.text_len,
      "text.negative_prompt": run.text.negative_prompt,
  }


def jit_sampler(sample, mesh, params_sharding):
  """jit a command's sample(params, prompt_index [B], context [B, Lt, D], negative [Lt, D]) -> latents
  [B, ...]: the prompts split over the mesh, the teacher as `params_sharding`, the negative replicated."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  from hybrid_forcing_jax.training import sharding
  batch, replicated = sharding.batch_sharding(mesh), NamedSharding(mesh, P())
  return jax.jit(sharding.traced_in_mesh(sample, mesh), in_shardings=(params_sharding, batch, batch, replicated),
                 out_shardings=batch)


def main(config, *, command: str, prepare_job, make_sampler, describe, folder_of) -> int:
  """A teacher-records command's main: flags and config checked, records written, the report printed.
  folder_of(run) -> the output folder (for the report)."""
  if config is None:
    raise cli.BadInput("--config is required (see --help)")
  check_flags()
  from hybrid_forcing_jax.training.sharding import initialize_distributed
  initialize_distributed()
  job = prepare_job(config)
  done = sample_shards(job, make_sampler, describe, **flag_values())
  report(job, done, command, folder_of(job.run))
  return 0


@dataclasses.dataclass
class Job:
  """Everything checked and loaded: what `sample_shards` needs."""
  run: object            # training.config.RunConfig
  prompts: list
  writer: object         # OdePairWriter
  timesteps: object      # of the kept latents


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


def sample_shards(job: Job, make_sampler, describe, *, batch_per_device: int = 1, fsdp: int = 0,
                  max_shards: int | None = None) -> dict:
  """Write this process's unfinished shards (at most `max_shards`); returns timing numbers.
  make_sampler(model, run, mesh, params_sharding) -> jit(params, prompt_index [B], context [B, Lt, D],
  negative [Lt, D]) -> the records' latents [B, K, F, h, w, C]; describe(job, pending) -> the start line."""
  import jax
  import numpy as np
  from tqdm import tqdm
  from hybrid_forcing_jax.training import builders, sharding
  from hybrid_forcing_jax.training.data.prompts import PromptEmbeddings, negative_context
  run = job.run
  pending = job.writer.pending(jax.process_index(), jax.process_count())[:max_shards]
  print(describe(job, pending), file=sys.stderr, flush=True)
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
  with tqdm(total=total, unit="prompt", desc="teacher samples", dynamic_ncols=True) as bar:
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


def report(job: Job, done: dict, command: str, folder: str) -> None:
  """The closing lines on stderr: throughput of this run, shards done and left."""
  if done["prompts"]:
    after = done["later_s_per_prompt"]
    print(f"{command}: wrote {done['shards']} shards, {done['prompts']} prompts in {done['seconds']:.1f} s: "
          f"{done['seconds'] / done['prompts']:.3f} s per prompt (the first batch includes compilation"
          + (f"; {after:.3f} s per prompt after it)" if after else ")"), file=sys.stderr)
  left = job.writer.pending()
  print(f"{command}: {job.writer.num_shards - len(left)} of {job.writer.num_shards} shards done in {folder}"
        + (f"; run again to write the other {len(left)}" if left else ""), file=sys.stderr)
