"""Scores of one generated world video against what its example says, read by world/detect.py. Every
score is in [0, 1] (latent_frame_steps' are pixels); on the ground-truth video the correctness scores are 1
(tests/test_world_eval.py).

  prompt_scores   colour, shape and direction read back equal the caption's; all three at once.
  window_scores   per window (5 s): the object is present in at least half its frames with the
                  caption's colour; drift = total-variation distance between the window's colour
                  histogram and the first window's (0: the same colours in the same amounts).
  return_scores   the long-memory return: the object is back in frames [start, stop), and with the
                  colour it had before it left (which the caption never says).
  motion_score    the share of frame-to-frame steps of the object's centroid that a world object could
                  make: between half the slowest and 1.5x the fastest speed of the world. An object that
                  stands still, or jumps, fails it; world videos score 0.99 on average (0.70 at worst,
                  scenes that leave the picture, where the visible part's centroid moves slower).
  latent_frame_steps  the median centroid step within a latent frame and across a latent-frame boundary:
                  a world object moves alike in both (~1.2 px a frame at 64x64); a model that moves it only
                  from one latent frame to the next (a token's frames as copies) stands still within them
                  and jumps across (docs/world.md, "Teacher4").
  jump_share      the share of frame-to-frame centroid steps longer than JUMP_FACTOR times the fastest a
                  world object moves: the object teleports (0 on world videos; what the teachers still do
                  after the median step looks right, docs/world.md "Layout and learning rate").
"""
from __future__ import annotations

import numpy as np

from hybrid_forcing_jax.world.detect import Detection
from hybrid_forcing_jax.world.scene import WorldConfig

HISTOGRAM_BINS = 8   # per channel: 512 joint bins; every palette colour and background falls in its own
JUMP_FACTOR = 3.0    # a step over 3x the fastest world motion (~6 px a frame at 64x64) is a jump, not motion


def prompt_scores(detection: Detection, example: dict) -> dict[str, float]:
  scores = {k: float(getattr(detection, k) == example[k]) for k in ("colour", "shape", "direction")}
  scores["all"] = float(all(scores.values()))
  return scores


def colour_histogram(frames: np.ndarray, bins: int = HISTOGRAM_BINS) -> np.ndarray:
  """uint8 frames [T, H, W, 3] -> the share of pixels in each of bins^3 colour cells, float64."""
  cells = (frames.reshape(-1, 3).astype(np.int64) * bins) // 256
  index = (cells[:, 0] * bins + cells[:, 1]) * bins + cells[:, 2]
  return np.bincount(index, minlength=bins ** 3) / len(index)


def histogram_distance(p: np.ndarray, q: np.ndarray) -> float:
  """Total variation distance, in [0, 1]."""
  return 0.5 * float(np.abs(p - q).sum())


def window_scores(video: np.ndarray, detection: Detection, colour: str, window: int) -> list[dict[str, float]]:
  """One {"object", "drift"} per whole window of `window` frames."""
  first = colour_histogram(video[:window])
  out = []
  for start in range(0, len(video) - window + 1, window):
    stop = start + window
    there = detection.present[start:stop].mean() >= 0.5 and detection.colour_between(start, stop) == colour
    out.append({"object": float(there), "drift": histogram_distance(colour_histogram(video[start:stop]), first)})
  return out


def return_scores(detection: Detection, colour: str, start: int, stop: int) -> dict[str, float]:
  back = detection.colour_between(start, stop)
  return {"colour": float(back == colour), "back": float(back is not None)}


def latent_frame_steps(detection: Detection, temporal_factor: int) -> dict[str, float | None]:
  """{"step_within", "step_across"}: the median centroid step in pixels between consecutive frames seen in
  both, where the two frames lie in the same latent frame or in two (the codecs' grouping: frame 0 alone, then
  `temporal_factor` frames a latent frame, so the step from frame i to i + 1 crosses a boundary when i is a
  multiple of temporal_factor). None where no such step is seen (within: always, at temporal_factor 1)."""
  both = detection.present[1:] & detection.present[:-1]
  steps = np.linalg.norm(np.diff(detection.centroids, axis=0), axis=-1)
  across = np.arange(len(steps)) % temporal_factor == 0
  median = lambda mask: float(np.median(steps[mask])) if mask.any() else None  # noqa: E731
  return {"step_within": median(both & ~across), "step_across": median(both & across)}


def _speeds(world: WorldConfig) -> tuple[float, float]:
  """(slowest, fastest) a world object moves, in pixels a frame: `speed` of the picture's side on the main
  axis, up to `cross_speed` times that across."""
  side = min(world.height, world.width)
  return world.speed[0] * side, world.speed[1] * side * float(np.hypot(1.0, world.cross_speed))


def _steps(detection: Detection) -> np.ndarray | None:
  """Centroid steps in pixels between consecutive frames that both show the object; None if there are none."""
  both = detection.present[1:] & detection.present[:-1]
  if not both.any():
    return None
  return np.linalg.norm(np.diff(detection.centroids, axis=0), axis=-1)[both]


def motion_score(detection: Detection, world: WorldConfig) -> float | None:
  """The share of consecutive frames (the object seen in both) whose centroid step, in pixels, lies in
  [0.5 v_min, 1.5 v_max], v the world's speed range per frame. None when the object is never seen in two
  frames in a row."""
  steps, (slowest, fastest) = _steps(detection), _speeds(world)
  return None if steps is None else float(np.mean((steps >= 0.5 * slowest) & (steps <= 1.5 * fastest)))


def jump_share(detection: Detection, world: WorldConfig) -> float | None:
  """The share of consecutive frames (the object seen in both) whose centroid step is over JUMP_FACTOR times
  the world's fastest motion a frame. None when the object is never seen in two frames in a row."""
  steps = _steps(detection)
  return None if steps is None else float(np.mean(steps > JUMP_FACTOR * _speeds(world)[1]))
