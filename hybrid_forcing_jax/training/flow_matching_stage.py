"""The flow_matching stage (issue 12, "The pipeline" step 1): a bidirectional WanDiT trained from
scratch (model.checkpoint "") or fine-tuned (a converted folder) by flow matching on latent videos of
the training length (training/losses/flow_matching.py), with caption dropout for classifier-free
guidance. What configs/world/teacher.py runs to make the world's teacher.

Data: the world's videos (the config's `world` section) through the latent codec of `data.codec`, their
captions embedded once by the frozen text encoder of `text` (training/data/world_videos.py). One update
per step; the negative prompt's embedding is the one frozen input.
"""
from __future__ import annotations

import functools

from jax.sharding import NamedSharding, PartitionSpec as P

from hybrid_forcing_jax import dit
from hybrid_forcing_jax.checkpoint import read_meta
from hybrid_forcing_jax.latent_codec import load_latent_codec
from hybrid_forcing_jax.training import builders, steps
from hybrid_forcing_jax.training.config import ConfigError, RunConfig
from hybrid_forcing_jax.training.data.prompts import negative_context
from hybrid_forcing_jax.training.data.world_videos import caption_embeddings, world_latent_dataset
from hybrid_forcing_jax.training.losses.flow_matching import flow_matching_loss
from hybrid_forcing_jax.training.stages import Stage, Update
from hybrid_forcing_jax.world.codec import PixelCodec


def load_codec(run: RunConfig) -> PixelCodec:
  """The codec of `data.codec`, which must be a pixel codec: the world's videos are encoded by it in
  the data pipeline (NumPy, no device)."""
  try:
    codec, _ = load_latent_codec(run.data.codec)
  except (OSError, ValueError) as e:
    raise ConfigError(f"config.data.codec: {e}") from None
  if not isinstance(codec, PixelCodec):
    raise ConfigError(f"config.data.codec: {run.data.codec!r} is a {type(codec).__name__}; world videos are encoded "
                      "by the world's pixel codec (python -m hybrid_forcing_jax.world.prepare writes one)")
  return codec


def check_inputs(run: RunConfig) -> None:
  """Refuse a codec, geometry or text encoder that does not fit the model, before anything is written."""
  codec = load_codec(run)
  world, c, d = run.world, codec.config, run.data
  if (world.num_frames - 1) % c.temporal_factor or world.height % c.spatial_factor or world.width % c.spatial_factor:
    raise ConfigError(f"config.world: {world.num_frames} frames of {world.height}x{world.width} do not fit the codec "
                      f"(1 + {c.temporal_factor}k frames, sides multiples of {c.spatial_factor})")
  frames = 1 + (world.num_frames - 1) // c.temporal_factor
  hw = (world.height // c.spatial_factor, world.width // c.spatial_factor)
  if d.num_frames != frames or tuple(d.latent_hw) != hw:
    raise ConfigError(f"config.data: num_frames {d.num_frames} / latent_hw {tuple(d.latent_hw)} are not the codec's "
                      f"latents of the world's videos ({frames} / {hw})")
  architecture = builders.wan_config(run.model)
  if architecture.in_dim != c.z_dim or architecture.out_dim != c.z_dim:
    raise ConfigError(f"config.model: in_dim {architecture.in_dim} / out_dim {architecture.out_dim} must be the "
                      f"codec's {c.z_dim} latent channels")
  if run.model.checkpoint:
    try:
      read_meta(run.model.checkpoint)
    except (OSError, ValueError) as e:
      raise ConfigError(f"config.model.checkpoint: {e}") from None
  if run.text.encoder:
    try:
      text_dim = read_meta(run.text.encoder)["config"]["dim"]
    except (OSError, ValueError) as e:
      raise ConfigError(f"config.text.encoder: {e}") from None
    if text_dim != architecture.text_dim:
      raise ConfigError(f"config.model: text_dim {architecture.text_dim} is not the text encoder's width {text_dim} "
                        f"({run.text.encoder})")


def build(run: RunConfig, model: dit.WanDiT, optimizer) -> Stage:
  codec = load_codec(run)
  embeddings = caption_embeddings(run.text, progress=True)
  loss = functools.partial(flow_matching_loss, model=model, shift=run.flow_matching.shift,
                           caption_dropout=run.flow_matching.caption_dropout)
  train_step = steps.make_train_step(loss, optimizer, ema_decay=run.optim.ema_decay, ema_start=run.optim.ema_start,
                                     # the model's storage dtypes: bf16 matmuls, float32 norms/modulation
                                     compute_dtype=dit.param_shapes(model.config, model.param_dtype))
  dataset = world_latent_dataset(run.world, codec, embeddings, seed=run.data.seed)
  frozen = {"negative_context": negative_context(run)[None]}
  return Stage(updates=(Update("", dataset, train_step),), frozen=frozen, frozen_shardings=replicated_shardings)


def replicated_shardings(mesh) -> dict:
  """The negative prompt's embedding on every device."""
  return {"negative_context": NamedSharding(mesh, P())}
