"""ODE-pair shards: the teacher's trajectory for each prompt, written by make_ode_pairs, read by ODE init.

A folder holds `manifest.json` (the config that made it, the kept timesteps, the shard count) and
array_record shards `ode_pairs-XXXXX.array_record`, shard s holding prompts [s R, (s + 1) R) for R =
`records_per_shard`, one record per prompt. A shard is written under a scratch name and renamed when
complete, then marked by `ode_pairs-XXXXX.done`: a restarted run skips marked shards and rewrites the
rest, so a killed run loses at most its unfinished shards.
"""
from __future__ import annotations

import json
import os
from typing import Any

import grain
import ml_dtypes
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from hybrid_forcing_jax.paths import ensure_writable_folder
from hybrid_forcing_jax.training.data.prompts import PromptEmbeddings

MANIFEST = "manifest.json"
FORMAT = 1
LATENT_DTYPE = ml_dtypes.bfloat16


def shard_name(shard: int) -> str:
  return f"ode_pairs-{shard:05d}.array_record"


def encode_record(prompt: str, prompt_index: int, latents: np.ndarray) -> bytes:
  """One prompt's record: a JSON header (prompt, index, shape, dtype) then the kept latents [K, F, h, w,
  C] as raw bfloat16; the same inputs give the same bytes."""
  latents = np.ascontiguousarray(np.asarray(latents).astype(LATENT_DTYPE))
  header = json.dumps(dict(prompt=prompt, prompt_index=int(prompt_index), shape=list(latents.shape),
                           dtype="bfloat16")).encode()
  return len(header).to_bytes(4, "little") + header + latents.tobytes()


def decode_record(data: bytes) -> dict[str, Any]:
  """-> {"prompt": str, "prompt_index": int, "latents": bfloat16 [K, F, h, w, C], "shape": tuple}."""
  size = int.from_bytes(data[:4], "little")
  header = json.loads(data[4:4 + size])
  shape = tuple(header["shape"])
  latents = np.frombuffer(data, LATENT_DTYPE, offset=4 + size).reshape(shape)
  return dict(prompt=header["prompt"], prompt_index=header["prompt_index"], shape=shape, latents=latents)


class OdePairWriter:
  """The shards of one output folder. `identity` is the config that decides the records (a flat dict of
  JSON values, keyed by config path); a folder made with another identity is refused, naming the
  keys that differ, and nothing in it is touched. `timesteps`: the kept latents' timesteps [K].
  `config_key`: the folder's config key, for messages (make_teacher_rollouts writes the same format)."""

  def __init__(self, folder: str, identity: dict, *, num_prompts: int, records_per_shard: int, timesteps,
               config_key: str = "ode_pairs.output_dir"):
    if records_per_shard < 1:
      raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
    self.folder, self.num_prompts, self.records_per_shard = folder, num_prompts, records_per_shard
    self.num_shards = -(-num_prompts // records_per_shard)
    manifest = dict(format=FORMAT, config=_json(identity), num_prompts=num_prompts,
                    records_per_shard=records_per_shard, num_shards=self.num_shards,
                    timesteps=[float(t) for t in timesteps])
    _check_folder(folder, manifest, config_key)
    self.manifest = manifest

  def shard_range(self, shard: int) -> range:
    return range(shard * self.records_per_shard, min((shard + 1) * self.records_per_shard, self.num_prompts))

  def is_done(self, shard: int) -> bool:
    return os.path.isfile(self._path(shard, ".done"))

  def pending(self, process_index: int = 0, process_count: int = 1) -> list[int]:
    """This process's unfinished shards: every process_count-th shard from process_index."""
    return [s for s in range(process_index, self.num_shards, process_count) if not self.is_done(s)]

  def open_shard(self, shard: int) -> "ShardWriter":
    _write_manifest(self.folder, self.manifest)
    return ShardWriter(self, shard)

  def _path(self, shard: int, suffix: str = "") -> str:
    return os.path.join(self.folder, shard_name(shard) + suffix)


class ShardWriter:
  """`with writer.open_shard(s) as w: w.write(prompt, index, latents)`: the shard and its DONE marker
  appear only if the block ends normally and every prompt of the shard was written."""

  def __init__(self, owner: OdePairWriter, shard: int):
    self.owner, self.shard, self.written = owner, shard, []
    self.scratch = owner._path(shard, ".tmp")
    self.records = ArrayRecordWriter(self.scratch, "group_size:1")

  def write(self, prompt: str, prompt_index: int, latents: np.ndarray) -> None:
    self.records.write(encode_record(prompt, prompt_index, latents))
    self.written.append(prompt_index)

  def __enter__(self) -> "ShardWriter":
    return self

  def __exit__(self, exc_type, exc, tb):
    self.records.close()
    if exc_type is not None:
      return
    expected = list(self.owner.shard_range(self.shard))
    if self.written != expected:
      raise RuntimeError(f"shard {self.shard}: wrote prompts {self.written[:5]}..., expected {expected[:5]}...")
    os.replace(self.scratch, self.owner._path(self.shard))
    with open(self.owner._path(self.shard, ".done"), "w") as f:
      json.dump(dict(records=len(expected), first_prompt=expected[0]), f)


def _json(value):
  """Tuples to lists etc.: the form the manifest holds, so a fresh identity compares equal to a read one."""
  return json.loads(json.dumps(value))


def _check_folder(folder: str, manifest: dict, config_key: str) -> None:
  """Refuse a folder made with another config, or one that is not an ODE-pair folder; make sure it
  can be written. Writes nothing but the (empty) folder itself: the manifest comes with the first shard,
  so a run that fails before (a wrong teacher path, say) leaves no manifest to refuse its fixed rerun."""
  path = os.path.join(folder, MANIFEST)
  if os.path.isfile(path):
    with open(path) as f:
      old = json.load(f)
    diff = config_diff(old["config"], manifest["config"])
    if diff:
      raise ValueError(f"{config_key} {folder!r} was made with a different config: {'; '.join(diff)}. "
                       "Use another folder (nothing was changed)")
  elif os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
    raise ValueError(f"{config_key} {folder!r} exists but is not an ODE-pair folder (no {MANIFEST}); "
                     "use an empty or new folder")
  try:
    ensure_writable_folder(folder)
  except OSError as e:
    raise ValueError(f"{config_key} {folder!r} cannot be written: {e.strerror or e}") from None


def config_diff(stored: dict, wanted: dict) -> list[str]:
  """'key (stored value there, wanted value now)' for each key whose values differ (either side may lack it)."""
  return [f"{k} ({stored.get(k)!r} there, {wanted.get(k)!r} now)"
          for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k)]


def unfinished_shards(folder: str, manifest: dict) -> list[int]:
  """The shards of a folder without their DONE marker."""
  return [s for s in range(manifest["num_shards"]) if not os.path.isfile(os.path.join(folder, shard_name(s) + ".done"))]


def _write_manifest(folder: str, manifest: dict) -> None:
  path = os.path.join(folder, MANIFEST)
  if not os.path.isfile(path):
    with open(path + ".tmp", "w") as f:
      json.dump(manifest, f, indent=2)
    os.replace(path + ".tmp", path)


def read_manifest(folder: str) -> dict:
  path = os.path.join(folder, MANIFEST)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{folder!r} is not an ODE-pair folder: {MANIFEST} is missing (make one with "
                            "python -m hybrid_forcing_jax.make_ode_pairs)")
  with open(path) as f:
    return json.load(f)


class _Example:
  """A record -> the training example, its context read from the prompt-embedding cache."""

  def __init__(self, embeddings: PromptEmbeddings, timesteps):
    self.embeddings, self.timesteps = embeddings, np.asarray(timesteps, np.float32)

  def __call__(self, data: bytes):
    record = decode_record(data)
    index = record["prompt_index"]
    if self.embeddings.prompts[index] != record["prompt"]:
      raise ValueError(f"ODE pair of prompt {index} ({record['prompt'][:60]!r}) does not match prompt {index} of "
                       f"the embeddings ({self.embeddings.prompts[index][:60]!r}): another prompts file?")
    return {"latents": record["latents"].astype(np.float32), "context": self.embeddings[index],
            "prompt_index": np.int32(index), "timesteps": self.timesteps}


def ode_pair_dataset(folder: str, embeddings: PromptEmbeddings, *, seed: int = 0, shuffle: bool = True,
                     num_epochs: int | None = None) -> grain.MapDataset:
  """{"latents": float32 [K, F, h, w, C], "context": bfloat16 [text_len, dim], "prompt_index": int32,
  "timesteps": float32 [K] (of the kept latents)} over a finished folder, shuffled with `seed` (a new
  order each epoch), repeated `num_epochs` times (None: without end). `embeddings`: PromptEmbeddings of
  the prompts the folder was made from (each record's prompt is checked against it)."""
  manifest = read_manifest(folder)
  unfinished = unfinished_shards(folder, manifest)
  if unfinished:
    raise ValueError(f"{folder!r}: {len(unfinished)} of {manifest['num_shards']} shards are unfinished (first: "
                     f"{shard_name(unfinished[0])}); run make_ode_pairs again to finish them")
  if len(embeddings) != manifest["num_prompts"]:
    raise ValueError(f"{folder!r} holds {manifest['num_prompts']} prompts, the embeddings {len(embeddings)}: "
                     "another prompts file?")
  source = grain.sources.ArrayRecordDataSource(
      [os.path.join(folder, shard_name(s)) for s in range(manifest["num_shards"])])
  ds = grain.MapDataset.source(source)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  return ds.repeat(num_epochs).map(_Example(embeddings, manifest["timesteps"]))
