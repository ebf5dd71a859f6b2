"""checkpoint.read_tensors: the memory-mapped reader of model.safetensors that load_checkpoint transfers from."""
import json
import struct

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from hybrid_forcing_jax.checkpoint import read_tensors


def test_reads_what_safetensors_reads(tmp_path):
  rng = np.random.default_rng(0)
  tensors = {"w": rng.standard_normal((3, 5)).astype(ml_dtypes.bfloat16), "norm": rng.standard_normal(7).astype(np.float32),
             "ids": rng.integers(-9, 9, (2, 2, 2)).astype(np.int32), "mask": rng.random(5) > 0.5,
             "empty": np.zeros((0, 4), np.float16), "scalar": np.asarray(2.5, np.float64)}
  path = str(tmp_path / "model.safetensors")
  save_file(tensors, path)
  views = read_tensors(path)
  with safe_open(path, framework="numpy") as f:
    assert sorted(views) == sorted(f.keys())
    for name in views:
      want = f.get_tensor(name)
      assert views[name].dtype == want.dtype and views[name].shape == want.shape, name
      np.testing.assert_array_equal(views[name], want)
  assert not views["w"].flags.writeable   # views of the read-only map: nothing copied


def write_raw(path, header: dict, data: bytes) -> str:
  raw = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(raw)) + raw + data)
  return str(path)


@pytest.mark.parametrize("header, data, reason", [
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "past the end of the file"),
    ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, b"\0" * 16, "does not fit its bytes 0..16"),
    ({"w": {"dtype": "Q7", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16, "unreadable header entry"),
    ({"w": {"dtype": "F32", "shape": [4]}}, b"\0" * 16, "unreadable header entry"),
])
def test_refuses_a_header_the_bytes_do_not_match(tmp_path, header, data, reason):
  path = write_raw(tmp_path / "bad.safetensors", header, data)
  with pytest.raises(ValueError, match=f"bad.safetensors: cannot read the weights file .*{reason}"):
    read_tensors(path)


def test_refuses_junk_and_a_cut_header(tmp_path):
  (tmp_path / "short.safetensors").write_bytes(b"\1\2\3")
  with pytest.raises(ValueError, match="short.safetensors: .*shorter than the 8-byte header length"):
    read_tensors(str(tmp_path / "short.safetensors"))
  (tmp_path / "cut.safetensors").write_bytes(struct.pack("<Q", 1000) + b"{}")
  with pytest.raises(ValueError, match="cut.safetensors: .*header of 1000 bytes in a file of 10"):
    read_tensors(str(tmp_path / "cut.safetensors"))
  (tmp_path / "junk.safetensors").write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{[")
  with pytest.raises(ValueError, match="junk.safetensors: cannot read the weights file"):
    read_tensors(str(tmp_path / "junk.safetensors"))
