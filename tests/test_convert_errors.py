"""The converter and loader refuse bad checkpoints with errors that name the file, key and shapes."""
import json
import os

import jax.numpy as jnp
import pytest
torch = pytest.importorskip("torch")  # the test extra; without it this module is skipped
from safetensors.torch import save_file

from convert.wan_dit import convert_dit
from hybrid_forcing_jax.checkpoint import load_checkpoint
from hybrid_forcing_jax.config import WAN_1_3B
from tests import dit_fixtures as fx


@pytest.fixture(scope="module")
def original():
  return fx.original_state_dict(fx.tiny_diffusers_model(seed=0))


def write(tmp_path, state, name="diffusion_pytorch_model.safetensors"):
  path = str(tmp_path / name)
  save_file({k: v.contiguous() for k, v in state.items()}, path)
  return path


def convert(path, out, **kw):
  kw.setdefault("num_heads", fx.CONFIG.num_heads)
  return convert_dit(path, out, progress=False, **kw)


def test_unknown_key_is_named(tmp_path, original):
  path = write(tmp_path, {**original, "blocks.0.self_attn.extra.weight": torch.zeros(3)})
  with pytest.raises(ValueError, match=r"would be dropped: \['blocks.0.self_attn.extra.weight'\]"):
    convert(path, str(tmp_path / "out"))


def test_missing_key_is_named(tmp_path, original):
  state = dict(original)
  del state["blocks.1.cross_attn.v.bias"]
  with pytest.raises(ValueError, match=r"missing from the checkpoint: \['blocks.1.cross_attn.v.bias'\]"):
    convert(write(tmp_path, state), str(tmp_path / "out"))


def test_shape_mismatch_names_key_and_shapes(tmp_path, original):
  state = dict(original)
  state["blocks.0.ffn.2.weight"] = torch.zeros(fx.CONFIG.dim, fx.CONFIG.ffn_dim + 1)
  with pytest.raises(ValueError, match=r"'blocks.0.ffn.2.weight' has shape \(48, 97\), expected \(48, 96\)"):
    convert(write(tmp_path, state), str(tmp_path / "out"))


def test_other_size_than_expected(tmp_path, original):
  with pytest.raises(ValueError, match="is not a wan_1_3b checkpoint.*'dim': \\(48, 1536\\)"):
    convert(write(tmp_path, original), str(tmp_path / "out"), expect="wan_1_3b")


def test_loader_refuses_other_config(tmp_path, original):
  convert(write(tmp_path, original), str(tmp_path / "out"))
  with pytest.raises(ValueError, match="differs from the requested one.*'num_layers': \\(2, 30\\)"):
    load_checkpoint(str(tmp_path / "out"), "wan_dit", expected_config=WAN_1_3B)
  with pytest.raises(ValueError, match="not 'wan_vae'"):
    load_checkpoint(str(tmp_path / "out"), "wan_vae")


def test_truncated_and_corrupt_safetensors(tmp_path, original):
  path = write(tmp_path, original)
  data = open(path, "rb").read()
  with open(tmp_path / "cut.safetensors", "wb") as f:
    f.write(data[: len(data) // 2])
  with pytest.raises(ValueError, match="cut.safetensors.*corrupt or truncated"):
    convert(str(tmp_path / "cut.safetensors"), str(tmp_path / "out"))
  with open(tmp_path / "junk.safetensors", "wb") as f:
    f.write(os.urandom(4096))
  with pytest.raises(ValueError, match="junk.safetensors.*corrupt or truncated"):
    convert(str(tmp_path / "junk.safetensors"), str(tmp_path / "out"))


def test_truncated_pt_and_missing_container(tmp_path, original):
  wrapped = {f"model.{k}": v for k, v in original.items()}
  torch.save({"generator": wrapped}, tmp_path / "ok.pt")
  with pytest.raises(ValueError, match=r"has no 'generator_ema' state dict; it holds \['generator'\]"):
    convert(str(tmp_path / "ok.pt"), str(tmp_path / "out"), weights="ema")
  data = open(tmp_path / "ok.pt", "rb").read()
  with open(tmp_path / "cut.pt", "wb") as f:
    f.write(data[: len(data) // 2])
  with pytest.raises(ValueError, match="cut.pt.*corrupt or truncated"):
    convert(str(tmp_path / "cut.pt"), str(tmp_path / "out"), weights="generator")


def test_truncated_converted_folder(tmp_path, original):
  out = str(tmp_path / "out")
  convert(write(tmp_path, original), out)
  weights = os.path.join(out, "model.safetensors")
  data = open(weights, "rb").read()
  with open(weights, "wb") as f:
    f.write(data[:-100])
  with pytest.raises(ValueError, match="model.safetensors.*corrupt or truncated"):
    load_checkpoint(out, "wan_dit", dtype=jnp.float32)
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump({"model": "wan_dit"}, f)
  with pytest.raises(ValueError, match="missing key 'config'"):
    load_checkpoint(out, "wan_dit")
  with pytest.raises(FileNotFoundError, match="not a converted checkpoint folder"):
    load_checkpoint(str(tmp_path), "wan_dit")


def test_sharded_index_with_missing_shard(tmp_path, original):
  index = fx.write_sharded(original, str(tmp_path / "wan"))
  os.remove(tmp_path / "wan" / "diffusion_pytorch_model-00002-of-00002.safetensors")
  with pytest.raises(FileNotFoundError, match="00002-of-00002.safetensors is missing"):
    convert(index, str(tmp_path / "out"))
