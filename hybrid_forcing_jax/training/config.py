"""The schema of a training config: typed sections checked against the ml_collections run file.

One file per stage (configs/ode_init.py) holds every value a run reads; this module holds no
defaults, so the file is the single source. `parse` turns the ConfigDict into frozen dataclasses and
refuses, naming the key: an unknown key (a typo, or a key nothing reads), a missing key, a section the
stage does not use, and values out of range.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

import numpy as np

from hybrid_forcing_jax import flow
from hybrid_forcing_jax.dit import REMAT_POLICIES

from hybrid_forcing_jax.streaming.config import StreamConfig


class ConfigError(ValueError):
  """A training config that cannot run; the message names the key."""


@dataclasses.dataclass(frozen=True)
class ModelSection:
  preset: str            # "wan_1_3b" | "wan_14b" | "tiny"
  overrides: dict        # WanConfig fields, e.g. {"linear_proj": True}
  checkpoint: str        # converted safetensors folder; "" = random init
  dtype: str             # compute dtype of weights and activations
  remat_policy: str      # "none" | "full" | "dots_saveable"
  attention_backend: str


@dataclasses.dataclass(frozen=True)
class TextSection:
  encoder: str           # converted umT5 folder; "" = tiny random umT5 (tests)
  tokenizer: str         # tokenizer folder; "" = byte-level fallback of the tiny encoder
  text_len: int
  cache_dir: str         # prompt-embedding cache
  negative_prompt: str


@dataclasses.dataclass(frozen=True)
class DataSection:
  prompts: str
  ode_pairs: str
  num_frames: int        # latent frames
  latent_hw: tuple
  batch_size: int        # global, over every device of every host
  seed: int
  num_workers: int


@dataclasses.dataclass(frozen=True)
class OptimSection:
  lr: float
  b1: float
  b2: float
  weight_decay: float
  eps: float
  clip_norm: float
  warmup_steps: int
  grad_accum: int
  ema_decay: float
  ema_start: int


@dataclasses.dataclass(frozen=True)
class MeshSection:
  data: int              # -1 = every device left over
  fsdp: int


@dataclasses.dataclass(frozen=True)
class TrainSection:
  steps: int
  seed: int
  mesh: MeshSection
  log_every: int
  checkpoint_every: int
  keep_last: int
  keep_every: int        # 0 = keep only the last ones
  export_every: int      # 0 = export the EMA generator only at the end


@dataclasses.dataclass(frozen=True)
class OdePairsSection:
  output_dir: str
  num_steps: int
  shift: float
  guidance: float
  keep: tuple
  records_per_shard: int
  seed: int


SECTIONS = dict(model=ModelSection, teacher=ModelSection, text=TextSection, data=DataSection, optim=OptimSection,
                train=TrainSection, ode_pairs=OdePairsSection)
STAGE_SECTIONS = {"ode_init": ("model", "teacher", "text", "stream", "data", "optim", "train", "ode_pairs")}


@dataclasses.dataclass(frozen=True)
class RunConfig:
  stage: str
  model: ModelSection
  teacher: ModelSection
  text: TextSection
  stream: StreamConfig
  data: DataSection
  optim: OptimSection
  train: TrainSection
  ode_pairs: OdePairsSection | None = None


def parse(config) -> RunConfig:
  """A ConfigDict (or nested dict) -> RunConfig, or ConfigError naming the offending key."""
  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  stage = d.get("stage")
  if stage not in STAGE_SECTIONS:
    raise ConfigError(f"config.stage: {stage!r} is not a training stage; known stages: {sorted(STAGE_SECTIONS)}")
  wanted = ("stage",) + STAGE_SECTIONS[stage]
  _check_keys(d, wanted, "config")
  sections = {}
  for name in STAGE_SECTIONS[stage]:
    if name == "stream":
      sections[name] = _stream(d[name])
    else:
      sections[name] = _section(SECTIONS[name], d[name], f"config.{name}")
  run = RunConfig(stage=stage, **sections)
  _check_values(run)
  return run


def _check_keys(d: dict, wanted, where: str) -> None:
  if not isinstance(d, dict):
    raise ConfigError(f"{where}: expected a section (ConfigDict), got {d!r}")
  unknown = sorted(set(d) - set(wanted))
  missing = sorted(set(wanted) - set(d))
  if unknown:
    raise ConfigError(f"{', '.join(f'{where}.{k}' for k in unknown)}: unknown key (nothing reads it); "
                      f"known keys of {where}: {sorted(wanted)}")
  if missing:
    raise ConfigError(f"{', '.join(f'{where}.{k}' for k in missing)}: missing key")


def _section(cls, d: Any, where: str):
  types = typing.get_type_hints(cls)
  _check_keys(d, list(types), where)
  values = {}
  for name, kind in types.items():
    if dataclasses.is_dataclass(kind):
      values[name] = _section(kind, d[name], f"{where}.{name}")
    elif kind is tuple:
      values[name] = tuple(d[name])
    elif kind is dict:
      values[name] = dict(d[name] or {})
    else:
      values[name] = d[name]
  return cls(**values)


def _stream(d: dict) -> StreamConfig:
  try:
    return StreamConfig.from_dict(d)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.stream: {e}") from None


def _check_values(run: RunConfig) -> None:
  def need(ok: bool, key: str, why: str):
    if not ok:
      raise ConfigError(f"config.{key}: {why}")

  for name in ("model", "teacher"):
    m = getattr(run, name)
    need(m.remat_policy in REMAT_POLICIES, f"{name}.remat_policy",
         f"{m.remat_policy!r} is not one of {sorted(REMAT_POLICIES)}")
    need(m.dtype in ("bfloat16", "float32"), f"{name}.dtype", f"{m.dtype!r} is not 'bfloat16' or 'float32'")
  d, o, t = run.data, run.optim, run.train
  need(d.batch_size >= 1, "data.batch_size", f"must be >= 1, got {d.batch_size}")
  need(len(d.latent_hw) == 2, "data.latent_hw", f"must be (height, width), got {d.latent_hw}")
  need(d.num_frames % run.stream.chunk_frames == 0, "data.num_frames",
       f"{d.num_frames} is not a multiple of stream.chunk_frames {run.stream.chunk_frames}")
  need(o.grad_accum >= 1, "optim.grad_accum", f"must be >= 1, got {o.grad_accum}")
  need(0.0 <= o.ema_decay < 1.0, "optim.ema_decay", f"must be in [0, 1), got {o.ema_decay}")
  need(t.steps >= 1, "train.steps", f"must be >= 1, got {t.steps}")
  for key in ("log_every", "checkpoint_every", "keep_last"):
    need(getattr(t, key) >= 1, f"train.{key}", f"must be >= 1, got {getattr(t, key)}")
  for key in ("keep_every", "export_every"):
    need(getattr(t, key) >= 0, f"train.{key}", f"must be >= 0, got {getattr(t, key)}")
  need(t.mesh.data == -1 or t.mesh.data >= 1, "train.mesh.data", f"must be -1 or >= 1, got {t.mesh.data}")
  need(t.mesh.fsdp == -1 or t.mesh.fsdp >= 1, "train.mesh.fsdp", f"must be -1 or >= 1, got {t.mesh.fsdp}")
  if run.ode_pairs is not None:
    p = run.ode_pairs
    need(p.keep and p.keep[-1] == p.num_steps, "ode_pairs.keep",
         f"must end with the clean latent (index num_steps = {p.num_steps}), got {p.keep}")
    # The student reads trajectory point i at its i-th timestep; the peers' shift-8 pairs against the
    # shift-5 schedule broke that silently (training_spec.md 1, "Timestep alignment").
    stored = flow.euler_sigmas(p.num_steps, p.shift)[list(p.keep[:-1])] * flow.NUM_TRAIN_TIMESTEPS
    student = run.stream.timesteps()
    need(len(stored) == len(student) and np.allclose(stored, student, atol=1e-3), "ode_pairs.keep",
         f"trajectory points at t = {np.round(stored, 2).tolist()} (num_steps {p.num_steps}, shift {p.shift}) "
         f"do not match the student's timesteps {np.round(student, 2).tolist()} (config.stream)")
