"""An MP4 that grows as frames arrive and stays playable if the process stops at any moment.

ffmpeg (imageio-ffmpeg's bundled binary) writes fragmented MP4 (`frag_keyframe+empty_moov`): the
header comes first and every fragment is self-contained, so a viewer can watch the file grow and a
crash or Ctrl-C leaves a valid file holding every frame written so far. H.264 needs even sizes.

Frames are handed to ffmpeg by a background thread through a short queue, so the generator is not
held up while ffmpeg encodes (pipe writes release the GIL); `close` drains the queue first. The thread
starts ffmpeg with the first frames, so a run that stops before its first frame leaves no file (and an
existing file it was allowed to overwrite untouched).
"""
from __future__ import annotations

import os
import queue
import re
import subprocess
import tempfile
import threading

import numpy as np

_QUEUED_CHUNKS = 2   # frames waiting for ffmpeg: bounded, so memory stays flat if encoding lags


def check_output_path(path: str, *, overwrite: bool = False) -> None:
  """Refuse, before anything is computed, an output the writer could not create: ValueError naming why."""
  if os.path.isdir(path):
    raise ValueError(f"{path!r} is a folder; give a file name ending in .mp4")
  if not path.lower().endswith(".mp4"):
    raise ValueError(f"{path!r} must end in .mp4")
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise ValueError(f"{path!r}: folder {folder!r} does not exist")
  if os.path.lexists(path):
    if not overwrite:
      raise ValueError(f"{path!r} exists; pass --overwrite to replace it")
    if not os.path.isfile(path):
      raise ValueError(f"{path!r} exists and is not a regular file")
  try:  # Permissions alone do not tell (root, read-only mounts, /proc): create a file there.
    with tempfile.TemporaryFile(dir=folder):
      pass
  except OSError as e:
    raise ValueError(f"{path!r} cannot be written: folder {folder!r}: {e.strerror}") from None


class Mp4Writer:
  def __init__(self, path: str, width: int, height: int, fps: int = 16, quality: int = 20, *,
               overwrite: bool = False):
    check_output_path(path, overwrite=overwrite)
    if width % 2 or height % 2:
      raise ValueError(f"MP4 (H.264) needs even frame sizes, got {width}x{height}")
    self.path, self.width, self.height, self.frames = path, width, height, 0
    import imageio_ffmpeg
    self._command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
        "-s", f"{width}x{height}", "-r", str(fps), "-i", "-", "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p",
        # x264's 'veryfast' preset: 1.65x the frame rate of its default (2 CPU cores, 832x480) for a
        # file of about the same size at this quality, so encoding keeps up with generation.
        "-preset", "veryfast", "-crf", str(quality), "-g", str(fps),
        "-movflags", "frag_keyframe+empty_moov+default_base_moof",
        # Each fragment reaches the file when it is complete: ffmpeg's 32 KB output buffer otherwise holds
        # ~150 frames of the world's 64x64 video (45 s of streaming on the CPU) and cuts fragments in two.
        "-flush_packets", "1", path]
    self._ffmpeg: subprocess.Popen | None = None
    self._ffmpeg_log = tempfile.TemporaryFile()
    self._queue: queue.Queue = queue.Queue(maxsize=_QUEUED_CHUNKS)
    self._error: str | None = None
    self._closed = False
    self._thread = threading.Thread(target=self._encode, name="mp4-writer", daemon=True)
    self._thread.start()

  def _encode(self) -> None:
    while (frames := self._queue.get()) is not None:
      if self._error is None:
        try:
          if self._ffmpeg is None:
            # A process group of its own: Ctrl-C stops the generator, not ffmpeg, which then
            # finishes the file with every frame it was given.
            self._ffmpeg = subprocess.Popen(self._command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                            stderr=self._ffmpeg_log, start_new_session=True)
          self._ffmpeg.stdin.write(np.ascontiguousarray(frames).tobytes())
        except OSError as e:  # ffmpeg died (its reason is in its log), disk full, ...
          self._error = self._ffmpeg_reason() or str(e)

  def _ffmpeg_reason(self) -> str | None:
    """ffmpeg's last error line, without its '[component @ 0x...]' prefix."""
    if self._ffmpeg is not None:
      try:
        self._ffmpeg.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._ffmpeg.kill()
    self._ffmpeg_log.seek(0)
    lines = [line.strip() for line in self._ffmpeg_log.read().decode(errors="replace").splitlines() if line.strip()]
    return "ffmpeg: " + re.sub(r"^\[[^\]]*\]\s*", "", lines[-1]) if lines else None

  def _raise_error(self) -> None:
    if self._error is not None:
      raise OSError(f"writing {self.path!r} failed: {self._error}")

  def append(self, frames: np.ndarray) -> None:
    """frames: [T, H, W, 3], uint8 or float in [-1, 1]. Returns once they are queued."""
    self._raise_error()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3):
      raise ValueError(f"frames must be [T, {self.height}, {self.width}, 3], got {frames.shape}")
    if frames.dtype != np.uint8:
      frames = np.clip(np.rint((frames.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    if len(frames):
      self._queue.put(frames)
      self.frames += len(frames)

  def close(self) -> None:
    """Write every queued frame, then finish the file (none is made if no frame came)."""
    if self._closed:
      return
    self._closed = True
    self._queue.put(None)
    self._thread.join()
    if self._ffmpeg is not None:
      try:
        self._ffmpeg.stdin.close()
      except OSError:
        pass   # ffmpeg already gone: its exit status and log say why
      if self._ffmpeg.wait() != 0 and self._error is None:
        self._error = self._ffmpeg_reason() or f"ffmpeg exited with status {self._ffmpeg.returncode}"
    self._ffmpeg_log.close()
    self._raise_error()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
