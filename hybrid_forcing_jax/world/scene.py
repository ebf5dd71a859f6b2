"""The world's scenes: one shape moving at constant velocity, reflected off walls, and its caption.

Positions are analytic (no simulation state): along each axis the object's centre moves at constant
velocity and reflects off the walls `lo`/`hi` of its arena, so frame t is computed directly and a video
of any length (the long-horizon evaluation's 10x training length) costs the same per frame. A
"bouncing" scene's walls are the picture's borders (less the object's half size); a "leaving" scene's
walls along its main axis lie outside the picture, so the object leaves the view and comes back.

Everything is drawn from a `numpy.random.Generator`, so a scene is a pure function of its seed.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from hybrid_forcing_jax.config_io import JsonConfig
from hybrid_forcing_jax.world import grammar

MAIN_AXIS = {"left": 1, "right": 1, "up": 0, "down": 0}   # axis 0 = y (down), axis 1 = x (right)
SIGN = {"left": -1.0, "right": 1.0, "up": -1.0, "down": 1.0}


@dataclasses.dataclass(frozen=True)
class WorldConfig(JsonConfig):
  """The world's distribution. Lengths are fractions of the picture's side, so they scale with it.

  64x64 by default: with the pixel codec (2x2 blocks, 4 frames a latent frame) and the DiT's 2x2 patch
  that is 16x16 tokens a latent frame, which a tiny DiT streams on a CPU (the issue's budget: 10 s of
  video in about a minute); 128x128 works the same at 4x the tokens.
  """
  height: int = 64
  width: int = 64
  fps: int = 16
  num_frames: int = 81                     # the training length: 1 + 4 * 20 frames = 21 latent frames, 5 s
  size: tuple[float, float] = (0.18, 0.26)  # object width (= height) range
  speed: tuple[float, float] = (0.012, 0.03)  # main-axis speed range, per frame
  cross_speed: float = 0.4                 # |cross-axis velocity| <= this times the main-axis speed
  leaving_fraction: float = 0.3            # share of "leaving" scenes
  margin: tuple[float, float] = (0.1, 0.5)  # a leaving scene's walls: this far outside the picture (+ half size)
  free_frames: int = 12                    # frames before the first main-axis bounce (the caption's direction)
  omit_probability: float = 0.15           # each optional caption part is left out with this probability
  long_memory_fraction: float = 0.0        # share of long-memory scenes among training scenes
  long_memory_frames: tuple[int, int, int] = (12, 32, 68)  # appears, leaves, comes back (video frames)

  def __post_init__(self):
    for f in ("size", "speed", "margin", "long_memory_frames"):
      object.__setattr__(self, f, tuple(getattr(self, f)))
    side = min(self.height, self.width)
    if side * self.size[1] + side * self.speed[1] * self.free_frames > side:
      raise ValueError(f"WorldConfig: an object of size {self.size[1]} at speed {self.speed[1]} cannot move "
                       f"free_frames={self.free_frames} frames without bouncing; lower one of them")
    appear, leave, back = self.long_memory_frames
    if not 0 < appear < leave < back < self.num_frames:
      raise ValueError(f"WorldConfig: long_memory_frames {self.long_memory_frames} must be increasing "
                       f"and inside the video's {self.num_frames} frames")


@dataclasses.dataclass(frozen=True)
class Scene:
  """One video's content. Vectors are (y, x) in pixels; `lo`/`hi` are the arena walls of the centre."""
  colour: str
  shape: str
  direction: str
  motion: str          # "bouncing" or "leaving"
  background: str
  caption: str
  half_size: float
  start: tuple[float, float]
  velocity: tuple[float, float]
  lo: tuple[float, float]
  hi: tuple[float, float]
  long_memory: bool = False

  def centres(self, frames: np.ndarray) -> np.ndarray:
    """The centre at each frame index -> float64 [len(frames), 2] (y, x)."""
    t = np.asarray(frames, np.float64)[:, None]
    lo, hi = np.asarray(self.lo), np.asarray(self.hi)
    span = hi - lo
    u = np.mod(np.asarray(self.start) + np.asarray(self.velocity) * t - lo, 2 * span)
    return lo + np.where(u <= span, u, 2 * span - u)


def sample_scene(rng: np.random.Generator, config: WorldConfig, split: str = "train") -> Scene:
  """A random scene of the split's (colour, shape, direction) combinations (grammar.combinations)."""
  colour, shape, direction = _choose(rng, grammar.combinations(split))
  motion = "leaving" if rng.random() < config.leaving_fraction else "bouncing"
  background = _choose(rng, list(grammar.BACKGROUNDS))
  n = np.array([config.height, config.width], np.float64)
  r = 0.5 * rng.uniform(*config.size) * n.min()
  a, s = MAIN_AXIS[direction], SIGN[direction]
  v = rng.uniform(*config.speed) * n[a]
  lo, hi = np.full(2, r), n - r
  start = rng.uniform(lo, hi)
  # Far enough from the wall ahead to keep the caption's direction for free_frames frames.
  run = v * config.free_frames
  start[a] = rng.uniform(lo[a] + run, hi[a]) if s < 0 else rng.uniform(lo[a], hi[a] - run)
  if motion == "leaving":
    m = r + rng.uniform(*config.margin) * n[a]
    lo[a], hi[a] = -m, n[a] + m
  velocity = np.zeros(2)
  velocity[a] = s * v
  velocity[1 - a] = rng.uniform(-1.0, 1.0) * config.cross_speed * v
  text = _caption(rng, config, shape, motion, colour=colour, direction=direction, background=background)
  return Scene(colour, shape, direction, motion, background, text, float(r), _floats(start), _floats(velocity),
               _floats(lo), _floats(hi))


def long_memory_scene(rng: np.random.Generator, config: WorldConfig, split: str = "train") -> Scene:
  """The long-memory evaluation's scene: absent from the first frames, the object enters at frame
  `appear`, crosses the picture along its main axis, is fully gone from frame `leave`, and re-enters
  from the side it left at frame `back` (config.long_memory_frames). The caption never says its colour.

  The speed makes the crossing take leave - appear frames; the wall behind the exit side sits where the
  trip out and back takes back - leave frames; the wall behind the entry side sits beyond the start, so
  nothing is seen before `appear`."""
  colour, shape, direction = _choose(rng, grammar.combinations(split))
  background = _choose(rng, list(grammar.BACKGROUNDS))
  appear, leave, back = config.long_memory_frames
  n = np.array([config.height, config.width], np.float64)
  r = 0.5 * rng.uniform(*config.size) * n.min()
  a, s = MAIN_AXIS[direction], SIGN[direction]
  v = (n[a] + 2 * r) / (leave - appear)
  entry = n[a] + r - 0.5 * v if s < 0 else -r + 0.5 * v   # a half step inside at frame `appear`
  start = np.empty(2)
  start[a] = entry - s * v * appear
  start[1 - a] = rng.uniform(r + 1, n[1 - a] - r - 1)   # off the border, so it is seen whole while crossing
  m = 0.5 * (v * (back - appear) - n[a])
  lo, hi = np.full(2, r), n - r
  lo[a], hi[a] = (-m, start[a] + v) if s < 0 else (start[a] - v, n[a] + m)
  velocity = np.zeros(2)
  velocity[a] = s * v
  text = _caption(rng, config, shape, "leaving", direction=direction, background=background)
  return Scene(colour, shape, direction, "leaving", background, text, float(r), _floats(start),
               _floats(velocity), _floats(lo), _floats(hi), long_memory=True)


def long_memory_fits(config: WorldConfig, *, sink_frames: int, window_frames: int, chunk_frames: int,
                     temporal_factor: int) -> None:
  """Raise ValueError unless the long-memory timing needs memory under this stream (latent frames):
  the object is outside the sink, and when it comes back no frame of the softmax window has shown it."""
  appear, leave, back = config.long_memory_frames
  latent = lambda f: 0 if f == 0 else (f - 1) // temporal_factor + 1  # noqa: E731  (Wan's 1 + 4k grouping)
  if latent(appear) < sink_frames:
    raise ValueError(f"long_memory_frames: the object appears at frame {appear}, inside the {sink_frames} "
                     "sink latent frames")
  chunk = latent(back) // chunk_frames
  window_start = (chunk + 1) * chunk_frames - (window_frames - sink_frames)
  if latent(leave - 1) >= window_start:
    raise ValueError(f"long_memory_frames: when the object comes back (frame {back}) the softmax window still "
                     f"holds latent frame {latent(leave - 1)}, where it was last seen; leave it away longer")


def _caption(rng, config: WorldConfig, shape: str, motion: str, **parts) -> str:
  said = {k: v for k, v in parts.items() if rng.random() >= config.omit_probability}
  return grammar.caption(shape, motion, **said)


def _floats(v: np.ndarray) -> tuple[float, float]:
  return (float(v[0]), float(v[1]))


def _choose(rng: np.random.Generator, options: list):
  return options[int(rng.integers(len(options)))]
