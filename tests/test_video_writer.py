"""The MP4 writer: every appended frame reaches the file, in order, through its background thread."""
import imageio
import numpy as np
import pytest

from hybrid_forcing_jax.video_writer import Mp4Writer


def test_frames_arrive_in_order(tmp_path):
  path = str(tmp_path / "ramp.mp4")
  levels = np.linspace(10, 245, 40).astype(np.uint8)
  with Mp4Writer(path, 64, 48, fps=16) as writer:
    for chunk in np.split(levels, 5):   # more chunks than the queue holds: append must wait, not drop
      writer.append(np.broadcast_to(chunk[:, None, None, None], (len(chunk), 48, 64, 3)))
  assert writer.frames == 40
  read = np.stack([f.mean() for f in imageio.get_reader(path)])
  assert len(read) == 40
  np.testing.assert_allclose(read, levels, atol=3)


def test_bad_shape_is_named(tmp_path):
  with Mp4Writer(str(tmp_path / "x.mp4"), 64, 48) as writer:
    with pytest.raises(ValueError, match=r"\[T, 48, 64, 3\]"):
      writer.append(np.zeros((2, 64, 48, 3), np.uint8))


def test_encoder_failure_is_reported(tmp_path):
  writer = Mp4Writer(str(tmp_path / "x.mp4"), 64, 48)
  writer._gen.close()   # ffmpeg gone: the thread's next write fails
  writer.append(np.zeros((2, 48, 64, 3), np.uint8))
  with pytest.raises(OSError, match="x.mp4"):
    writer.close()
