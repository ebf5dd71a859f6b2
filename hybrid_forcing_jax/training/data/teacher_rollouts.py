"""The teacher regulariser's precomputed targets (paper Sec. 3.4, Eq. 9; `regulariser.source = "records"`):
per prompt i, the teacher's `regulariser.num_steps`-step CFG sample of the loss window, started from the
window noise of the noise key fold_in(key(regulariser.seed), i) (training/rollout.py's `window_noise`, the
noise the generator's window starts from for that key at any rollout length).

Written by make_teacher_rollouts in the ODE-pair shard format (training/data/ode_pairs.py: one record per
prompt, its latents [1, F, h, w, C] = the final sample at t = 0, a DONE marker per shard, resumable, a
manifest naming the config that made them); read by the DMD stage's generator dataset, which adds each
example's noise key. A folder made with any other value that decides the records is refused, naming it.
"""
from __future__ import annotations

import json

import grain
import jax
import numpy as np

from hybrid_forcing_jax.training import teacher_records
from hybrid_forcing_jax.training.data.ode_pairs import config_diff, ode_pair_dataset, read_manifest, unfinished_shards

CONFIG_KEY = "regulariser.records"
TIMESTEPS = (0.0,)   # one kept latent: the final sample


def identity(run, prompts) -> dict:
  """What decides the records, by config key."""
  r = run.regulariser
  return teacher_records.identity(run, prompts, {
      "regulariser.num_steps": r.num_steps, "regulariser.shift": r.shift, "regulariser.guidance": r.guidance,
      "regulariser.seed": r.seed, "regulariser.records_per_shard": r.records_per_shard,
      # the window noise's layout: chunks of chunk_frames, one noise draw per denoising step
      "stream.chunk_frames": run.stream.chunk_frames, "stream.denoising_steps": list(run.stream.denoising_steps)})


def check_folder(run, prompts) -> None:
  """The folder is finished and was made with this config (ValueError / OSError naming what differs)."""
  folder = run.regulariser.records
  manifest = read_manifest(folder)
  wanted = json.loads(json.dumps(identity(run, prompts)))
  diff = config_diff(manifest["config"], wanted)
  if diff:
    raise ValueError(f"{folder!r} holds teacher rollouts of another config: {'; '.join(diff)}")
  unfinished = unfinished_shards(folder, manifest)
  if unfinished:
    raise ValueError(f"{folder!r}: {len(unfinished)} of {manifest['num_shards']} shards are unfinished; run "
                     "python -m hybrid_forcing_jax.make_teacher_rollouts with this config to finish them")


def noise_key(seed: int, prompt_index):
  """The key whose window noise starts prompt `prompt_index`'s teacher rollout and its generator rollouts."""
  return jax.random.fold_in(jax.random.key(seed), prompt_index)


class _Example:
  """An ODE-pair-format example -> the generator's batch entry (a class: grain's workers pickle it)."""

  def __init__(self, seed: int):
    self.seed = seed

  def __call__(self, example):
    key = np.asarray(jax.random.key_data(noise_key(self.seed, int(example["prompt_index"]))))
    return {"context": example["context"], "prompt_index": example["prompt_index"], "noise_key": key,
            "teacher_latents": example["latents"][0]}


def dataset(run, embeddings) -> grain.MapDataset:
  """{"context", "prompt_index", "noise_key" uint32 key data, "teacher_latents" float32 [F, h, w, C]},
  shuffled with data.seed, without end."""
  return ode_pair_dataset(run.regulariser.records, embeddings, seed=run.data.seed).map(_Example(run.regulariser.seed))
