"""Which frames a chunk sees, where they live in the cache, and their temporal RoPE positions.

All functions take the traced frame counter (first frame of the current chunk) and return int32 arrays
of static shape, so one compiled chunk step serves the whole video.

Relative RoPE with cap M (Hybrid Forcing Sec. 1.4 of our notes, cf. Infinity-RoPE): while the video
is shorter than M frames, positions are absolute frame numbers. Afterwards the current chunk sits at
[M - F, M), window frames keep their offset from it and the sink keeps [0, S); no index reaches M.
Absolute mode (Self-Forcing) uses the frame numbers themselves.
"""
from __future__ import annotations

import jax.numpy as jnp

from hybrid_forcing_jax.streaming.config import StreamConfig


def slot_of(cfg: StreamConfig, frame):
  """Cache slot of a (non-negative) frame: sink frame f -> slot f; later frames -> ring slot
  S + (f - S) mod R, so writing a frame overwrites exactly the frame R positions earlier, which is
  the one leaving the window (ring buffer: nothing else moves)."""
  s, r = cfg.sink_frames, cfg.ring_frames
  ring = s + jnp.mod(frame - s, max(r, 1))
  return jnp.where(frame < s, frame, ring).astype(jnp.int32)


def cached_frames(cfg: StreamConfig, frame):
  """The cached part of the softmax set of the chunk starting at `frame`.

  Returns (frames, slots, n_valid): frames [S + R] int32 in chronological order, valid ones first
  and -1 after them; slots [S + R] the cache slot of each (0 where invalid); n_valid int32 scalar.
  """
  s, r = cfg.sink_frames, cfg.ring_frames
  frame = jnp.asarray(frame, jnp.int32)
  n_sink = jnp.minimum(s, frame)
  ring_start = jnp.maximum(s, frame - r)
  n_ring = jnp.maximum(0, frame - ring_start)
  j = jnp.arange(s + r, dtype=jnp.int32)
  frames = jnp.where(j < n_sink, j, ring_start + (j - n_sink))
  n_valid = n_sink + n_ring
  frames = jnp.where(j < n_valid, frames, -1)
  slots = jnp.where(frames >= 0, slot_of(cfg, jnp.maximum(frames, 0)), 0)
  return frames, slots, n_valid


def rope_shift(cfg: StreamConfig, frame):
  """How far non-sink frames are moved down so the current chunk ends at M (0 in absolute mode)."""
  if cfg.rope == "absolute":
    return jnp.zeros((), jnp.int32)
  return jnp.maximum(0, jnp.asarray(frame, jnp.int32) + cfg.chunk_frames - cfg.rope_cap)


def frame_positions(cfg: StreamConfig, frame, frames):
  """Temporal RoPE index of absolute frames `frames` seen by the chunk starting at `frame`. The sink
  keeps its absolute positions [0, S); everything else keeps its offset from the current chunk.
  Invalid entries (-1) get position 0 (they are masked)."""
  shifted = frames - rope_shift(cfg, frame)
  pos = jnp.where(frames < cfg.sink_frames, frames, shifted)
  return jnp.where(frames >= 0, pos, 0).astype(jnp.int32)


def query_positions(cfg: StreamConfig, frame):
  """Positions of the current chunk's F frames."""
  frames = jnp.asarray(frame, jnp.int32) + jnp.arange(cfg.chunk_frames, dtype=jnp.int32)
  return frame_positions(cfg, frame, frames)
