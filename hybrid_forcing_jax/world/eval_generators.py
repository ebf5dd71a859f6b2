"""What the world evaluation measures: each generator maps world examples (their captions, and for a
teacher-forced prefix their ground-truth frames) to uint8 videos [B, T, H, W, 3] of the examples' size.

  StreamGenerator  the streaming student: the sampler's chunk step (its few-step schedule), each chunk
                   decoded by the latent codec. With a prefix, the first chunks are the ground truth's,
                   encoded by the codec and written into the cache by `sampler.write_chunk` instead of
                   generated (teacher forcing): the model has SEEN those frames, as it sees its own.
  TeacherGenerator the bidirectional teacher: N Euler steps with CFG over the whole video at once
                   (training/teacher.euler_trajectory), then decoded. With a prefix, its latent frames
                   are the ground truth's, held there by replacement (`euler_trajectory(..., known=)`): the model
                   denoises the rest seeing them, through full attention.
  GroundTruth      the examples' own videos: validates the measurements (they read back what the
                   caption says).

Every call takes a jax key; videos depend on it and on the batch (noise is drawn per batch).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from hybrid_forcing_jax.dit import WanDiT
from hybrid_forcing_jax.pipeline import to_uint8
from hybrid_forcing_jax.streaming import sampler
from hybrid_forcing_jax.streaming.config import StreamConfig
from hybrid_forcing_jax.training import guidance
from hybrid_forcing_jax.training.teacher import euler_trajectory
from hybrid_forcing_jax.world.codec import PixelCodecConfig


# Every video of a batch [B, T, H, W, 3] in [-1, 1] -> uint8, rounded as the pipeline rounds.
_to_uint8 = jax.jit(jax.vmap(lambda video: to_uint8(video[None])))


def _videos(examples) -> np.ndarray:
  return np.stack([e["video"] for e in examples])


def _encode_prefix(codec, codec_params, videos: np.ndarray, frames: int):
  return codec.encode(codec_params, jnp.asarray(videos[:, :frames], jnp.float32) / 127.5 - 1.0)


class _Reporting:
  """`progress`: None, or a callable (evaluate_world sets a progress bar's `update`) told how many video frames
  each call has finished, summed over its batch, as they are made."""
  progress = None

  def _made(self, frames: int) -> None:
    if self.progress is not None:
      self.progress(frames)


class _ModelGenerator(_Reporting):
  """What the model rows share: their latent codec's grouping of video frames."""
  codec: object

  @property
  def temporal_factor(self) -> int:
    """Video frames a latent frame holds (after latent frame 0's one): eval_metrics.latent_frame_steps."""
    return self.codec.config.temporal_factor


class StreamGenerator(_ModelGenerator):

  def __init__(self, model: WanDiT, params, stream: StreamConfig, codec, codec_params, embed):
    self.model, self.params, self.stream = model, params, stream
    self.codec, self.codec_params, self.embed = codec, codec_params, embed

  def chunk_video_frames(self, num_chunks: int) -> int:
    """Video frames of the first `num_chunks` chunks (Wan's 1 + 4k grouping: 9, then 12 a chunk)."""
    tf, f = self.codec.config.temporal_factor, self.stream.chunk_frames
    return 1 + tf * (f * num_chunks - 1)

  def prefix_frames(self, frames: int) -> int:
    """The fewest video frames of whole chunks that cover the first `frames` frames."""
    chunks = 1
    while self.chunk_video_frames(chunks) < frames:
      chunks += 1
    return self.chunk_video_frames(chunks)

  def __call__(self, examples, num_frames: int, key, prefix_frames: int = 0) -> np.ndarray:
    videos = _videos(examples)
    f, sf = self.stream.chunk_frames, self.codec.config.spatial_factor
    prefix = None
    if prefix_frames:
      if prefix_frames != self.prefix_frames(prefix_frames):
        raise ValueError(f"a prefix of {prefix_frames} frames is no whole number of chunks")
      prefix = _encode_prefix(self.codec, self.codec_params, videos, prefix_frames)
    state = sampler.start(self.model, self.params, self.stream, self.embed([e["caption"] for e in examples]), key,
                          (videos.shape[2] // sf, videos.shape[3] // sf))
    step = sampler.jitted_step(self.model, self.stream)
    write = sampler.jitted_phases(self.model, self.stream)[1]
    out, made, cache, index = [], 0, None, 0
    while made < num_frames:
      if prefix is not None and index * f < prefix.shape[1]:
        latents = prefix[:, index * f:(index + 1) * f]
        state = write(self.params, state, latents)
      else:
        state, latents = step(self.params, state)
      frames, cache = self.codec.decode_chunk(self.codec_params, latents.astype(self.codec.options.dtype), cache)
      out.append(np.asarray(_to_uint8(frames)))
      self._made(len(examples) * min(out[-1].shape[1], num_frames - made))
      made += out[-1].shape[1]
      index += 1
    return np.concatenate(out, axis=1)[:, :num_frames]


class TeacherGenerator(_ModelGenerator):

  def __init__(self, model: WanDiT, params, codec, codec_params, embed, *, negative_prompt: str, num_steps: int,
               shift: float, guidance_scale: float):
    self.model, self.params, self.codec, self.codec_params, self.embed = model, params, codec, codec_params, embed
    self.negative_prompt = negative_prompt
    # One jitted sampler: `known` None (plain sampling) and a prefix array trace to their own programs.
    self._sample = jax.jit(functools.partial(euler_trajectory, model, num_steps=num_steps, shift=shift,
                                             guidance=guidance_scale, keep=(num_steps,)))
    self._text_kv = jax.jit(functools.partial(guidance.text_kv, model))

  def prefix_frames(self, frames: int) -> int:
    """The fewest video frames of whole latent frames (1 + 4k) that cover the first `frames` frames."""
    tf = self.codec.config.temporal_factor
    return 1 + tf * -(-(frames - 1) // tf)

  def __call__(self, examples, num_frames: int, key, prefix_frames: int = 0) -> np.ndarray:
    videos = _videos(examples)
    c = self.codec.config
    latent_frames = 1 + -(-(num_frames - 1) // c.temporal_factor)
    shape = (len(examples), latent_frames, videos.shape[2] // c.spatial_factor, videos.shape[3] // c.spatial_factor,
             self.model.config.in_dim)
    cond = self._text_kv(self.params, self.embed([e["caption"] for e in examples]))
    uncond = self._text_kv(self.params, self.embed([self.negative_prompt]))
    known = None
    if prefix_frames:
      if prefix_frames != self.prefix_frames(prefix_frames) or prefix_frames > num_frames:
        raise ValueError(f"a prefix of {prefix_frames} frames is no whole number of latent frames of the video")
      known = _encode_prefix(self.codec, self.codec_params, videos, prefix_frames).astype(jnp.float32)
    z = self._sample(self.params, jax.random.normal(key, shape, jnp.float32), cond, uncond, known=known)[:, -1]
    frames = np.asarray(_to_uint8(self.codec.decode(self.codec_params, z.astype(self.codec.options.dtype))))
    self._made(len(examples) * num_frames)
    return frames[:, :num_frames]


class GroundTruth(_Reporting):
  # Its steps are split as the world codec's latent frames would hold the frames (the reference for a model's).
  temporal_factor = PixelCodecConfig().temporal_factor

  def __call__(self, examples, num_frames: int, key, prefix_frames: int = 0) -> np.ndarray:
    del key, prefix_frames   # the whole video is the ground truth's, prefix or not
    self._made(len(examples) * num_frames)
    return _videos(examples)[:, :num_frames]

  def prefix_frames(self, frames: int) -> int:
    return frames
