"""The schema of a training config: typed sections checked against the ml_collections run file.

One file per stage (configs/ode_init.py; configs/world/teacher.py for flow_matching) holds every value
a run reads; this module holds no defaults, so the file is the single source. `parse` turns the
ConfigDict into frozen dataclasses and refuses, naming the key: an unknown key (a typo, or a key nothing
reads), a missing key, a section the stage does not use, and values out of range.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

import numpy as np

from hybrid_forcing_jax import flow
from hybrid_forcing_jax.dit import REMAT_POLICIES
from hybrid_forcing_jax.streaming.config import StreamConfig
from hybrid_forcing_jax.training.dmd_setup import REGULARISER_SOURCES
from hybrid_forcing_jax.world.scene import WorldConfig


class ConfigError(ValueError):
  """A training config that cannot run; the message names the key."""


@dataclasses.dataclass(frozen=True)
class ModelSection:
  preset: str            # "wan_1_3b" | "wan_14b" | "tiny"
  overrides: dict        # WanConfig fields, e.g. {"linear_proj": True}
  checkpoint: str        # converted safetensors folder; "" = random init
  dtype: str             # compute dtype of weights and activations
  remat_policy: str      # a key of dit.REMAT_POLICIES: "none" | "full" | "dots_saveable" | "attention_saveable"
  attention_backend: str


@dataclasses.dataclass(frozen=True)
class TextSection:
  encoder: str           # converted umT5 folder; "" = tiny random umT5 (tests)
  tokenizer: str         # tokenizer folder; "" = byte-level fallback of the tiny encoder
  text_len: int
  cache_dir: str         # prompt-embedding cache
  negative_prompt: str


@dataclasses.dataclass(frozen=True)
class PromptDataSection:
  prompts: str
  num_frames: int        # latent frames (DMD: the loss window, the last frames of each rollout)
  latent_hw: tuple
  batch_size: int        # global, over every device of every host
  seed: int
  num_workers: int


@dataclasses.dataclass(frozen=True)
class DataSection(PromptDataSection):
  ode_pairs: str


@dataclasses.dataclass(frozen=True)
class VideoDataSection:
  """flow_matching's videos: the world's (the `world` section) through the codec; a folder of the
  users' own latents is a later addition (docs/training.md)."""
  codec: str             # latent codec folder (latent_codec.load_latent_codec): the world's pixel codec
  num_frames: int        # latent frames of a training video: world.num_frames through the codec
  latent_hw: tuple       # world.height, world.width through the codec
  batch_size: int        # global, over every device of every host
  seed: int              # the world's examples: example i is a pure function of (seed, i)
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


@dataclasses.dataclass(frozen=True)
class DmdSection:
  critic_lr: float       # the critic's constant LR (optim.lr is the generator's; the rest of optim is shared)
  generator_every: int   # one generator update before every generator_every-th critic update (5)
  guidance: float        # the real score's CFG, u + g (c - u) in x0 (4.0 = Self-Forcing's "3.0", c + 3 (c - u))
  t_min: float           # DMD's and the critic's timestep law: shift stream.shift, clamped to [t_min, t_max]
  t_max: float
  min_frames: int        # rollout length in latent frames, drawn per step (multiples of stream.chunk_frames)
  max_frames: int
  context_noise: float   # timestep of the cache writes (0 = the clean chunk)
  vae: str               # converted VAE folder for rollouts longer than data.num_frames; "" = tiny random VAE


@dataclasses.dataclass(frozen=True)
class RegulariserSection:
  weight: float          # Eq. 9's weight (0.05); 0 = off (phase 1)
  source: str            # "online" (teacher rollout in the step) | "records" (make_teacher_rollouts)
  records: str           # the records folder (make_teacher_rollouts writes it, the trainer reads it)
  num_steps: int         # teacher Euler steps (25)
  shift: float
  guidance: float        # u + g (c - u), as dmd.guidance
  seed: int              # records: the noise of prompt i is drawn from fold_in(key(seed), i)
  records_per_shard: int


@dataclasses.dataclass(frozen=True)
class FlowMatchingSection:
  shift: float           # t = 1000 shift(u), u ~ U[0, 1): the law of the teacher sampler's Euler steps
  caption_dropout: float # per example, the caption is replaced by text.negative_prompt with this probability


SECTIONS = dict(model=ModelSection, teacher=ModelSection, critic=ModelSection, text=TextSection,
                optim=OptimSection, train=TrainSection, ode_pairs=OdePairsSection, dmd=DmdSection,
                regulariser=RegulariserSection, flow_matching=FlowMatchingSection)
STAGE_DATA = {"ode_init": DataSection, "dmd": PromptDataSection, "flow_matching": VideoDataSection}
STAGE_SECTIONS = {
    "ode_init": ("model", "teacher", "text", "stream", "data", "optim", "train", "ode_pairs"),
    "dmd": ("model", "teacher", "critic", "text", "stream", "data", "optim", "train", "dmd", "regulariser"),
    "flow_matching": ("model", "text", "data", "optim", "train", "flow_matching", "world")}
# Sections a stage takes when given: a student's `world` is the world it is distilled for (configs/world/*.py), which
# evaluate_world reads to evaluate it there; the stage itself does not.
STAGE_OPTIONAL = {"ode_init": ("world",), "dmd": ("world",), "flow_matching": ()}


@dataclasses.dataclass(frozen=True)
class RunConfig:
  stage: str
  model: ModelSection
  text: TextSection
  data: PromptDataSection | VideoDataSection
  optim: OptimSection
  train: TrainSection
  teacher: ModelSection | None = None     # None: flow_matching trains the teacher itself
  stream: StreamConfig | None = None      # None: flow_matching's model is bidirectional
  ode_pairs: OdePairsSection | None = None
  critic: ModelSection | None = None
  dmd: DmdSection | None = None
  regulariser: RegulariserSection | None = None
  flow_matching: FlowMatchingSection | None = None
  world: WorldConfig | None = None


def parse(config) -> RunConfig:
  """A ConfigDict (or nested dict) -> RunConfig, or ConfigError naming the offending key."""
  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  stage = d.get("stage")
  if stage not in STAGE_SECTIONS:
    raise ConfigError(f"config.stage: {stage!r} is not a training stage; known stages: {sorted(STAGE_SECTIONS)}")
  given = tuple(k for k in STAGE_OPTIONAL[stage] if k in d)
  wanted = ("stage",) + STAGE_SECTIONS[stage] + given
  _check_keys(d, wanted, "config")
  sections = {}
  for name in STAGE_SECTIONS[stage] + given:
    if name == "stream":
      sections[name] = _stream(d[name])
    elif name == "world":
      sections[name] = _world(d[name])
    elif name == "data":
      sections[name] = _section(STAGE_DATA[stage], d[name], "config.data")
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


def _world(d: dict) -> WorldConfig:
  try:
    return WorldConfig.from_dict(dict(d))
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.world: {e}") from None


def _check_values(run: RunConfig) -> None:
  def need(ok: bool, key: str, why: str):
    if not ok:
      raise ConfigError(f"config.{key}: {why}")

  for name in ("model", "teacher", "critic"):
    m = getattr(run, name)
    if m is None:
      continue
    need(m.remat_policy in REMAT_POLICIES, f"{name}.remat_policy",
         f"{m.remat_policy!r} is not one of {sorted(REMAT_POLICIES)}")
    need(m.dtype in ("bfloat16", "float32"), f"{name}.dtype", f"{m.dtype!r} is not 'bfloat16' or 'float32'")
  d, o, t = run.data, run.optim, run.train
  need(d.batch_size >= 1, "data.batch_size", f"must be >= 1, got {d.batch_size}")
  need(len(d.latent_hw) == 2, "data.latent_hw", f"must be (height, width), got {d.latent_hw}")
  need(run.stream is None or d.num_frames % run.stream.chunk_frames == 0, "data.num_frames",
       f"{d.num_frames} is not a multiple of stream.chunk_frames {run.stream and run.stream.chunk_frames}")
  need(o.grad_accum >= 1, "optim.grad_accum", f"must be >= 1, got {o.grad_accum}")
  need(0.0 <= o.ema_decay < 1.0, "optim.ema_decay", f"must be in [0, 1), got {o.ema_decay}")
  need(t.steps >= 1, "train.steps", f"must be >= 1, got {t.steps}")
  for key in ("log_every", "checkpoint_every", "keep_last"):
    need(getattr(t, key) >= 1, f"train.{key}", f"must be >= 1, got {getattr(t, key)}")
  for key in ("keep_every", "export_every"):
    need(getattr(t, key) >= 0, f"train.{key}", f"must be >= 0, got {getattr(t, key)}")
  need(t.mesh.data == -1 or t.mesh.data >= 1, "train.mesh.data", f"must be -1 or >= 1, got {t.mesh.data}")
  need(t.mesh.fsdp == -1 or t.mesh.fsdp >= 1, "train.mesh.fsdp", f"must be -1 or >= 1, got {t.mesh.fsdp}")
  if run.dmd is not None:
    _check_dmd(run, need)
  if run.flow_matching is not None:
    f = run.flow_matching
    need(f.shift > 0, "flow_matching.shift", f"must be > 0, got {f.shift}")
    need(0 <= f.caption_dropout < 1, "flow_matching.caption_dropout", f"must be in [0, 1), got {f.caption_dropout}")
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


def _check_dmd(run: RunConfig, need) -> None:
  m, r, chunk = run.dmd, run.regulariser, run.stream.chunk_frames
  need(m.critic_lr > 0, "dmd.critic_lr", f"must be > 0, got {m.critic_lr}")
  need(m.generator_every >= 1, "dmd.generator_every", f"must be >= 1, got {m.generator_every}")
  need(0 <= m.t_min < m.t_max <= flow.NUM_TRAIN_TIMESTEPS, "dmd.t_min",
       f"need 0 <= t_min < t_max <= {flow.NUM_TRAIN_TIMESTEPS}, got t_min {m.t_min}, t_max {m.t_max}")
  for key in ("min_frames", "max_frames"):
    need(getattr(m, key) % chunk == 0, f"dmd.{key}",
         f"{getattr(m, key)} is not a multiple of stream.chunk_frames {chunk}")
  need(run.data.num_frames <= m.min_frames <= m.max_frames, "dmd.min_frames",
       f"need data.num_frames ({run.data.num_frames}, the loss window) <= min_frames <= max_frames, got "
       f"min_frames {m.min_frames}, max_frames {m.max_frames}")
  need(0 <= m.context_noise < flow.NUM_TRAIN_TIMESTEPS, "dmd.context_noise",
       f"must be in [0, 1000), got {m.context_noise}")
  need(r.weight >= 0, "regulariser.weight", f"must be >= 0, got {r.weight}")
  need(r.source in REGULARISER_SOURCES, "regulariser.source",
       f"{r.source!r} is not one of {list(REGULARISER_SOURCES)}")
  need(r.num_steps >= 1, "regulariser.num_steps", f"must be >= 1, got {r.num_steps}")
  need(r.records_per_shard >= 1, "regulariser.records_per_shard", f"must be >= 1, got {r.records_per_shard}")
  need(r.source != "records" or r.records, "regulariser.records",
       "is empty; set the folder make_teacher_rollouts wrote")
