"""Read a world video back: colour segmentation and centroid tracking -> colour, shape, direction of
motion and background, for the evaluation of generated videos (prompt following, long horizon, long
memory). Validated on ground-truth videos, where it reads back what the caption says.

Per frame: the background is the frame's median colour (the object covers a small part of it);
foreground pixels differ from it by more than `threshold` in some channel (the closest palette pair,
purple on grey, differs by 72); the object is present when there are at least `min_fraction` of the
picture's pixels. Its colour is the palette colour nearest to the foreground's median colour. Over the
video: the colour is the majority of the frames' colours; the shape comes from the median share of its
bounding box that the object fills (square 1, circle pi/4, triangle 1/2; only frames where the box
does not touch the border, unless it touches it in every frame: an object gliding along a wall is
whole, and a partly hidden one is still better guessed than not); the direction from the centroid's
displacement over the first `direction_frames` frames of its first visible run (the world keeps the
caption's direction that long).
"""
from __future__ import annotations

import collections
import dataclasses

import numpy as np

from hybrid_forcing_jax.world import grammar

# Fill-ratio boundaries between the shapes' ratios as rendered at the world's sizes (64x64, sizes
# 0.18-0.26, sub-pixel offsets): triangles 0.50-0.58, circles 0.72-0.86, squares 1.
SQUARE_ABOVE, TRIANGLE_BELOW = 0.93, 0.65


@dataclasses.dataclass(frozen=True)
class Detection:
  colour: str | None        # None: the object was never seen
  shape: str | None         # None: never seen
  direction: str | None     # None: seen in fewer than 2 consecutive frames
  background: str
  present: np.ndarray       # bool [T]
  centroids: np.ndarray     # float64 [T, 2] (y, x); NaN where absent
  frame_colours: tuple[str | None, ...]

  def colour_between(self, start: int, stop: int) -> str | None:
    """The majority colour over frames [start, stop) where the object is present (None: absent there)."""
    return _majority(self.frame_colours[start:stop])


def detect(video: np.ndarray, *, threshold: int = 40, min_fraction: float = 0.002,
           direction_frames: int = 8) -> Detection:
  """video: uint8 [T, H, W, 3]."""
  if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
    raise ValueError(f"detect: expects a uint8 video [T, H, W, 3], got {video.dtype} {video.shape}")
  t, h, w, _ = video.shape
  pixels = video.reshape(t, h * w, 3).astype(np.int16)
  backgrounds = np.median(pixels, axis=1)                                  # [T, 3]
  foreground = (np.abs(pixels - backgrounds[:, None]).max(-1) > threshold).reshape(t, h, w)
  present = foreground.sum((1, 2)) >= max(1, min_fraction * h * w)
  centroids = np.full((t, 2), np.nan)
  frame_colours: list[str | None] = [None] * t
  fills, edge_fills = [], []
  for i in np.nonzero(present)[0]:
    ys, xs = np.nonzero(foreground[i])
    centroids[i] = ys.mean(), xs.mean()
    frame_colours[i] = _nearest(grammar.COLOURS, np.median(video[i][foreground[i]], axis=0))
    inside = ys.min() > 0 and xs.min() > 0 and ys.max() < h - 1 and xs.max() < w - 1
    (fills if inside else edge_fills).append(len(ys) / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)))
  return Detection(colour=_majority(frame_colours), shape=_shape(fills or edge_fills),
                   direction=_direction(present, centroids, direction_frames),
                   background=_nearest(grammar.BACKGROUNDS, np.median(backgrounds, axis=0)),
                   present=present, centroids=centroids, frame_colours=tuple(frame_colours))


def _nearest(palette: dict[str, tuple[int, int, int]], rgb: np.ndarray) -> str:
  names = list(palette)
  distances = np.linalg.norm(np.asarray([palette[n] for n in names], np.float64) - rgb, axis=1)
  return names[int(np.argmin(distances))]


def _majority(names) -> str | None:
  counts = collections.Counter(n for n in names if n is not None)
  return counts.most_common(1)[0][0] if counts else None


def _shape(fills: list[float]) -> str | None:
  if not fills:
    return None
  fill = float(np.median(fills))
  return "square" if fill > SQUARE_ABOVE else "triangle" if fill < TRIANGLE_BELOW else "circle"


def _direction(present: np.ndarray, centroids: np.ndarray, frames: int) -> str | None:
  seen = np.nonzero(present)[0]
  if len(seen) < 2:
    return None
  first = seen[0]
  run_end = first
  while run_end + 1 < len(present) and present[run_end + 1] and run_end - first < frames:
    run_end += 1
  if run_end == first:
    return None
  dy, dx = centroids[run_end] - centroids[first]
  if abs(dx) >= abs(dy):
    return "right" if dx > 0 else "left"
  return "down" if dy > 0 else "up"
