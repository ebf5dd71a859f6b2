"""The MP4 writer: every appended frame reaches the file, in order, through its background thread; it
refuses an output it could not write before any work, makes no file without frames, and reports
ffmpeg's own reason in one line."""
import os
import shutil

import numpy as np
import pytest

imageio = pytest.importorskip("imageio")  # the test extra; without it this module is skipped

from hybrid_forcing_jax.video_writer import Mp4Writer, check_output_path


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


def test_ffmpeg_failure_is_one_line_with_its_reason(tmp_path):
  (tmp_path / "gone").mkdir()
  writer = Mp4Writer(str(tmp_path / "gone" / "x.mp4"), 64, 48)
  shutil.rmtree(tmp_path / "gone")   # ffmpeg opens its output with the first frames: it cannot now
  writer.append(np.zeros((2, 48, 64, 3), np.uint8))
  with pytest.raises(OSError) as error:
    writer.close()
  message = str(error.value)
  assert "x.mp4' failed: ffmpeg: " in message and "No such file or directory" in message
  assert "\n" not in message


def test_no_frames_no_file(tmp_path):
  path = tmp_path / "x.mp4"
  path.write_bytes(b"the user's video")
  Mp4Writer(str(path), 64, 48, overwrite=True).close()   # e.g. Ctrl-C before the first frame
  assert path.read_bytes() == b"the user's video"
  Mp4Writer(str(tmp_path / "new.mp4"), 64, 48).close()
  assert not (tmp_path / "new.mp4").exists()


def test_file_mode_follows_umask(tmp_path):
  old = os.umask(0o027)
  try:
    with Mp4Writer(str(tmp_path / "x.mp4"), 64, 48) as writer:
      writer.append(np.zeros((1, 48, 64, 3), np.uint8))
  finally:
    os.umask(old)
  assert (tmp_path / "x.mp4").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("name,needle", [
    ("folder", "is a folder"),
    ("video.avi", "must end in .mp4"),
    ("video", "must end in .mp4"),
    ("existing.mp4", "exists; pass --overwrite"),
    ("missing/x.mp4", "does not exist"),
])
def test_output_refused_before_any_work(tmp_path, name, needle):
  (tmp_path / "folder").mkdir()
  (tmp_path / "existing.mp4").write_bytes(b"keep me")
  with pytest.raises(ValueError, match=needle):
    check_output_path(str(tmp_path / name))
  assert (tmp_path / "existing.mp4").read_bytes() == b"keep me"
  check_output_path(str(tmp_path / "existing.mp4"), overwrite=True)


def test_unwritable_special_folder_is_refused():
  with pytest.raises(ValueError, match="/proc/x.mp4' cannot be written"):
    check_output_path("/proc/x.mp4")
