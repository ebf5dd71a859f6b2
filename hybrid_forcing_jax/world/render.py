"""Scene -> uint8 frames, in NumPy: flat colours, no anti-aliasing (hard edges keep every pixel one of
two palette colours, which the exact codec keeps and the detector reads back without thresholds to tune).

Shapes of half size r around the centre (cy, cx), tested at pixel centres: a disc of radius r; an
axis-aligned square of side 2r; an upright isosceles triangle with its apex at (cy - r, cx) and its
base of width 2r at cy + r. All three fill a 2r x 2r box: fully, pi/4 of it and half of it, which is
how the detector tells them apart.
"""
from __future__ import annotations

import numpy as np

from hybrid_forcing_jax.world import grammar
from hybrid_forcing_jax.world.scene import Scene, WorldConfig


def shape_mask(shape: str, centres: np.ndarray, r: float, height: int, width: int) -> np.ndarray:
  """bool [T, H, W]: the pixels the shape covers, one frame per (y, x) centre of `centres` [T, 2]."""
  dy = (np.arange(height) + 0.5)[None, :, None] - centres[:, 0, None, None]
  dx = (np.arange(width) + 0.5)[None, None, :] - centres[:, 1, None, None]
  if shape == "circle":
    return dy * dy + dx * dx <= r * r
  if shape == "square":
    return (np.abs(dy) <= r) & (np.abs(dx) <= r)
  if shape == "triangle":
    return (dy <= r) & (np.abs(dx) <= 0.5 * (dy + r))
  raise ValueError(f"shape must be one of {grammar.SHAPES}, got {shape!r}")


def render(scene: Scene, config: WorldConfig, frames: np.ndarray | None = None) -> np.ndarray:
  """The scene's frames (default: 0 .. config.num_frames - 1) -> uint8 [T, H, W, 3]."""
  frames = np.arange(config.num_frames) if frames is None else np.asarray(frames)
  mask = shape_mask(scene.shape, scene.centres(frames), scene.half_size, config.height, config.width)
  background = np.asarray(grammar.BACKGROUNDS[scene.background], np.uint8)
  colour = np.asarray(grammar.COLOURS[scene.colour], np.uint8)
  return np.where(mask[..., None], colour, background)
