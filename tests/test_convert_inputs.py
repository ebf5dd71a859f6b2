"""`python -m convert` on inputs a user gets wrong: files that are not checkpoints, a pickle that would
run code, a checkpoint missing whole trailing layers, a tiny model without its head count. Each is
refused with a message that says what it is; the CLI exits 2; converted files get the user's umask."""
import json
import os
import re
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")  # the test extra; without it this module is skipped
from safetensors.torch import load_file, save_file
from transformers import UMT5Config, UMT5EncoderModel

from convert.umt5 import convert_umt5
from convert.wan_dit import convert_dit
from hybrid_forcing_jax.checkpoint import load_checkpoint
from tests import dit_fixtures as fx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def original():
  return fx.original_state_dict(fx.tiny_diffusers_model(seed=0))


def write(folder, state, name="diffusion_pytorch_model.safetensors"):
  folder.mkdir(exist_ok=True)
  save_file({k: v.contiguous() for k, v in state.items()}, str(folder / name))
  return str(folder / name)


class _MakesAFolder:
  """Unpickling this calls os.mkdir: the side effect shows whether any code ran."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return os.mkdir, (self.path,)


def test_pickle_that_calls_code_is_refused_and_named(tmp_path, original):
  marker = str(tmp_path / "code_ran")
  torch.save({"generator_ema": {f"model.{k}": v for k, v in original.items()}, "hook": _MakesAFolder(marker)},
             tmp_path / "evil.pt")
  with pytest.raises(ValueError) as error:
    convert_dit(str(tmp_path / "evil.pt"), str(tmp_path / "out"), progress=False)
  message = str(error.value)
  assert "evil.pt: refused for safety" in message and "'posix.mkdir'" in message and "not a tensor" in message
  assert "weights_only" not in message
  assert not os.path.exists(marker) and not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("content,needle", [
    (b"", "is empty, not a PyTorch checkpoint"),
    (bytes(range(7, 256)) * 8, "not a PyTorch checkpoint (torch.save writes a zip archive"),
], ids=["empty", "random_bytes"])
def test_file_that_is_not_a_checkpoint(tmp_path, content, needle):
  (tmp_path / "model.pt").write_bytes(content)
  with pytest.raises(ValueError, match=re.escape(needle)) as error:
    convert_dit(str(tmp_path / "model.pt"), str(tmp_path / "out"), progress=False)
  assert "mmap" not in str(error.value)


def test_head_count_that_no_shape_shows(tmp_path, original):
  """The tiny model's dim (48) is no multiple of Wan's head size (128); no config.json names its heads."""
  with pytest.raises(ValueError, match="cannot infer the number of attention heads.*pass --num_heads"):
    convert_dit(write(tmp_path / "src", original), str(tmp_path / "out"), progress=False)


def test_dit_missing_trailing_layers_against_config_json(tmp_path, original):
  last = fx.CONFIG.num_layers - 1
  shallow = {k: v for k, v in original.items() if not k.startswith(f"blocks.{last}.")}
  src = write(tmp_path / "src", shallow)
  with open(tmp_path / "src" / "config.json", "w") as f:   # as in Wan's folder
    json.dump({"dim": fx.CONFIG.dim, "num_heads": fx.CONFIG.num_heads, "num_layers": fx.CONFIG.num_layers}, f)
  with pytest.raises(ValueError, match=f"holds {last} layers, but .*config.json says num_layers={last + 1}"):
    convert_dit(src, str(tmp_path / "out"), progress=False)
  assert not os.path.exists(tmp_path / "out")
  # The complete checkpoint beside the same config.json converts (heads from it too).
  assert convert_dit(write(tmp_path / "src", original), str(tmp_path / "out"), progress=False) == fx.CONFIG


def test_umt5_missing_trailing_layers_against_config_json(tmp_path):
  hf = UMT5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=3, num_heads=4,
                  relative_attention_num_buckets=8, feed_forward_proj="gated-gelu")
  UMT5EncoderModel(hf).save_pretrained(tmp_path / "src", safe_serialization=True)
  src = str(tmp_path / "src" / "model.safetensors")
  state = {k: v for k, v in load_file(src).items() if not k.startswith("encoder.block.2.")}
  save_file(state, src)
  with pytest.raises(ValueError, match="holds 2 layers, but .*config.json says num_layers=3"):
    convert_umt5(src, str(tmp_path / "out"), progress=False)


def test_converted_files_follow_the_umask(tmp_path, original):
  old = os.umask(0o022)
  try:
    convert_dit(write(tmp_path / "src", original), str(tmp_path / "out"), num_heads=fx.CONFIG.num_heads,
                progress=False)
  finally:
    os.umask(old)
  for name in ("model.safetensors", "config.json"):
    assert (tmp_path / "out" / name).stat().st_mode & 0o777 == 0o644, name
  load_checkpoint(str(tmp_path / "out"), "wan_dit")


def run_convert(*args):
  return subprocess.run([sys.executable, "-m", "convert", *args], capture_output=True, text=True, cwd=ROOT,
                        timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
  (tmp_path / "empty.pt").write_bytes(b"")
  for args, needle in [
      ([f"--src={tmp_path}/empty.pt", f"--out={tmp_path}/out"], "empty.pt: is empty, not a PyTorch checkpoint"),
      ([f"--src={tmp_path}/none.safetensors", f"--out={tmp_path}/out"], "does not exist"),
      ([f"--out={tmp_path}/out"], "--src"),
      ([f"--src={tmp_path}/empty.pt", f"--out={tmp_path}/out", "--model=vae", "--num_heads=2"],
       "--num_heads only apply to --model=dit"),
  ]:
    done = run_convert(*args)
    assert done.returncode == 2, (args, done.stderr)
    assert done.stderr.startswith("convert: error: ") and needle in done.stderr, (args, done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
