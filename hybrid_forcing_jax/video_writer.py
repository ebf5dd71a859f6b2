"""An MP4 that grows as frames arrive and stays playable if the process stops at any moment.

ffmpeg (from imageio-ffmpeg's bundled binary) writes fragmented MP4 (`frag_keyframe+empty_moov`): the
header comes first and every fragment is self-contained, so a viewer can watch the file grow and a
crash or Ctrl-C leaves a valid file holding every frame written so far. H.264 needs even sizes.
"""
from __future__ import annotations

import os

import numpy as np


class Mp4Writer:
  def __init__(self, path: str, width: int, height: int, fps: int = 16, quality: int = 20):
    import imageio_ffmpeg
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
      raise ValueError(f"output {path!r}: folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
      raise ValueError(f"output {path!r} cannot be written (permission denied)")
    if width % 2 or height % 2:
      raise ValueError(f"MP4 (H.264) needs even frame sizes, got {width}x{height}")
    self.path, self.width, self.height, self.frames = path, width, height, 0
    self._gen = imageio_ffmpeg.write_frames(
        path, (width, height), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
        output_params=["-movflags", "frag_keyframe+empty_moov+default_base_moof", "-crf", str(quality),
                       "-g", str(fps)],
        macro_block_size=1, ffmpeg_log_level="error")
    self._gen.send(None)

  def append(self, frames: np.ndarray) -> None:
    """frames: [T, H, W, 3], uint8 or float in [-1, 1]."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3):
      raise ValueError(f"frames must be [T, {self.height}, {self.width}, 3], got {frames.shape}")
    if frames.dtype != np.uint8:
      frames = np.clip(np.rint((frames.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    for frame in frames:
      self._gen.send(np.ascontiguousarray(frame))
    self.frames += len(frames)

  def close(self) -> None:
    if self._gen is not None:
      self._gen.close()
      self._gen = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
