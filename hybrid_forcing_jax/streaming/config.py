"""Static description of a stream: chunking, the softmax window, linear memory, RoPE mode, sampler.

Frozen and hashable: it is part of the trace (`AttentionLayout.stream`) and a static jit argument.
The frame-level definition (tests check against it), with chunk c = frames [F c, F c + F):
  * softmax set of chunk c: sink frames [0, S) plus the most recent frames filling a window of W frames
    in all, the current chunk included; so R = W - S - F earlier non-sink frames ("ring" frames);
  * linear set: every non-sink frame that has left the softmax window, absorbed once when it leaves.
The settings themselves (Hybrid Forcing's, Self-Forcing's) live in one place: the `stream` section of
configs/hybrid.py and configs/self_forcing.py (`from_config(get_config().stream)`).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from hybrid_forcing_jax import flow
from hybrid_forcing_jax.config_io import JsonConfig


@dataclasses.dataclass(frozen=True)
class StreamConfig(JsonConfig):
  chunk_frames: int = 3        # F: latent frames per chunk (`num_frame_per_block`)
  sink_frames: int = 3         # S
  window_frames: int = 9       # W: softmax window in frames, sink and current chunk included
  rope: str = "relative"       # "relative" (capped, Hybrid Forcing) or "absolute" (Self-Forcing)
  rope_cap: int = 21           # M: no temporal RoPE index reaches M in relative mode
  linear: bool = True          # linear-attention memory of evicted frames (Eq. 7)
  linear_eps: float = 1e-6
  sparse_ratio: float | None = 0.2   # top-k ratio of 64-token key blocks (Eq. 5, 6); None = dense
  keep_sink: bool = False      # force-keep the sink's key blocks in sparse mode (paper: off)
  keep_own_chunk: bool = False  # force-keep the query chunk's own key blocks (paper: off)
  sparse_backend: str = "auto"  # attention backend of the block-sparse softmax ("xla" = dense-mask reference)
  denoising_steps: tuple[int, ...] = (1000, 750, 500, 250)
  warp_denoising_steps: bool = True
  shift: float = 5.0
  num_train_timesteps: int = 1000

  def __post_init__(self):
    object.__setattr__(self, "denoising_steps", tuple(int(s) for s in self.denoising_steps))
    f, s, w = self.chunk_frames, self.sink_frames, self.window_frames
    if f < 1 or s < 0:
      raise ValueError(f"StreamConfig: chunk_frames must be >= 1 and sink_frames >= 0, got {f}, {s}")
    if w < s + f:
      raise ValueError(f"StreamConfig: window_frames {w} must hold the sink ({s}) and the current chunk ({f})")
    if self.rope not in ("relative", "absolute"):
      raise ValueError(f"StreamConfig: rope must be 'relative' or 'absolute', got {self.rope!r}")
    if self.rope == "relative" and self.rope_cap < w:
      raise ValueError(f"StreamConfig: rope_cap {self.rope_cap} must be >= window_frames {w} so the window "
                       "fits below the cap without colliding with the sink's positions")
    if self.sparse_ratio is not None and not 0.0 < self.sparse_ratio <= 1.0:
      raise ValueError(f"StreamConfig: sparse_ratio must be in (0, 1] or None, got {self.sparse_ratio}")

  @property
  def ring_frames(self) -> int:
    """R: earlier non-sink frames inside the softmax window (ring-buffer slots)."""
    return self.window_frames - self.sink_frames - self.chunk_frames

  @property
  def cache_slots(self) -> int:
    """Frame slots of the K/V cache: S sink slots, then R ring slots."""
    return self.sink_frames + self.ring_frames

  def valid_frame_counts(self) -> tuple[int, ...]:
    """Every number of cached frames a chunk can see (warm-up, then steady state); static."""
    counts, c = set(), 0
    while True:
      n = cached_count(self, c * self.chunk_frames)
      counts.add(n)
      if n == self.cache_slots or c > self.cache_slots + 2:
        return tuple(sorted(counts))
      c += 1

  def timesteps(self) -> np.ndarray:
    """The sampler's t values (float64): the flow-matching table at `shift`, warped or not
    (flow.warp: [1000, 750, 500, 250] -> [1000, 937.5, 833.33, 625], Self-Forcing)."""
    if not self.warp_denoising_steps:
      return np.asarray(self.denoising_steps, np.float64)
    return flow.warp(self.denoising_steps, self.shift, self.num_train_timesteps)

  def sigmas(self) -> np.ndarray:
    return self.timesteps() / self.num_train_timesteps


def cached_count(cfg: StreamConfig, frame: int) -> int:
  """Cached frames visible to the chunk starting at `frame` (Python ints; see positions.cached_frames)."""
  s, r = cfg.sink_frames, cfg.ring_frames
  return min(s, frame) + max(0, frame - max(s, frame - r))


def from_config(d) -> StreamConfig:
  """A StreamConfig from a mapping (e.g. the `stream` ConfigDict of configs/hybrid.py)."""
  return StreamConfig.from_dict(dict(d))
