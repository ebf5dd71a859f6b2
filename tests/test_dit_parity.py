"""The Flax DiT, loaded through the converter, equals diffusers' WanTransformer3DModel (float32)."""
import os

import jax.numpy as jnp
import numpy as np
import pytest
torch = pytest.importorskip("torch")  # the test extra; without it this module is skipped
convert_wan_transformer_to_diffusers = pytest.importorskip(
    "diffusers.loaders.single_file_utils").convert_wan_transformer_to_diffusers
from safetensors.torch import save_file

from convert.wan_dit import convert_dit
from hybrid_forcing_jax.checkpoint import load_checkpoint
from hybrid_forcing_jax.dit import WanDiT
from tests import dit_fixtures as fx
from tests.torch_reference import assert_same_state_dict


def rel_err(a, b):
  return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def run_ours(folder, x, t, ctx):
  config, params = load_checkpoint(folder, "wan_dit", dtype=jnp.float32)
  model = WanDiT(config, dtype=jnp.float32, param_dtype=jnp.float32, attention_backend="xla")
  return np.asarray(model.apply({"params": params}, x, t, ctx)), params


@pytest.fixture(scope="module")
def reference():
  model = fx.tiny_diffusers_model(seed=0)
  x, t, ctx = fx.inputs(seed=1)
  return model, (x, t, ctx), fx.diffusers_forward(model, x, t, ctx)


def test_diffusers_format(tmp_path, reference):
  model, (x, t, ctx), want = reference
  model.save_pretrained(tmp_path / "src", safe_serialization=True)
  convert_dit(str(tmp_path / "src" / "diffusion_pytorch_model.safetensors"), str(tmp_path / "out"),
              dtype="float32", progress=False)
  got, _ = run_ours(str(tmp_path / "out"), x, t, ctx)
  assert got.shape == want.shape
  assert rel_err(got, want) <= 1e-5


def test_original_format_names_agree_with_diffusers_converter(reference):
  model, _, _ = reference
  original = fx.original_state_dict(model)
  assert any(k.startswith("blocks.1.self_attn.q.") for k in original)
  back = convert_wan_transformer_to_diffusers(dict(original))
  assert_same_state_dict(back, model.state_dict())


def test_original_format_sharded(tmp_path, reference):
  model, (x, t, ctx), want = reference
  index = fx.write_sharded(fx.original_state_dict(model), str(tmp_path / "wan"))
  config = convert_dit(index, str(tmp_path / "out"), dtype="float32", progress=False)
  assert config == fx.CONFIG  # heads read from the config.json beside the shards
  got, _ = run_ours(str(tmp_path / "out"), x, t, ctx)
  assert rel_err(got, want) <= 1e-5


def test_original_format_single_file_bf16_storage(tmp_path, reference):
  """Default conversion stores matmul weights in bf16 and keeps norms/modulation/time in float32."""
  model, (x, t, ctx), want = reference
  save_file(fx.original_state_dict(model), str(tmp_path / "diffusion_pytorch_model.safetensors"))
  convert_dit(str(tmp_path / "diffusion_pytorch_model.safetensors"), str(tmp_path / "out"),
              num_heads=fx.CONFIG.num_heads, progress=False)
  config, params = load_checkpoint(str(tmp_path / "out"), "wan_dit")
  assert params["blocks"]["self_attn"]["q"]["weight"].dtype == jnp.bfloat16
  assert params["blocks"]["self_attn"]["norm_q"]["weight"].dtype == jnp.float32
  assert params["blocks"]["modulation"].dtype == jnp.float32
  assert params["time_embedding"]["0"]["weight"].dtype == jnp.float32
  out = WanDiT(config, attention_backend="xla").apply({"params": params}, x, t, ctx)
  assert out.dtype == jnp.bfloat16
  assert rel_err(np.asarray(out, np.float32), want) < 3e-2  # bf16 weights and activations


def test_training_checkpoint(tmp_path, reference):
  """Self-Forcing / Hybrid Forcing `.pt`: `model.` prefix, FSDP wrapper segments, EMA or not, and
  Hybrid Forcing's per-layer linear_proj kept."""
  model, (x, t, ctx), want = reference
  c = fx.CONFIG
  ema = fx.original_state_dict(model)
  raw = {k: v + 1.0 for k, v in ema.items()}  # a different generator, to see which one was taken
  for state in (ema, raw):
    for i in range(c.num_layers):
      state[f"blocks.{i}.self_attn.linear_proj.weight"] = torch.randn(c.head_dim, c.head_dim)
      state[f"blocks.{i}.self_attn.linear_proj.bias"] = torch.randn(c.head_dim)

  def wrap(state):
    out = {}
    for k, v in state.items():
      block, _, rest = k.partition(".")
      name = f"model._fsdp_wrapped_module.{block}.{rest}" if block == "blocks" else f"model._orig_mod.{k}"
      out[name] = v
    return out

  torch.save({"generator_ema": wrap(ema), "generator": wrap(raw), "step": 5}, tmp_path / "model.pt")
  config = convert_dit(str(tmp_path / "model.pt"), str(tmp_path / "ema"), dtype="float32", progress=False)
  assert config.linear_proj and config.num_heads == c.num_heads  # heads from linear_proj's shape
  got, params = run_ours(str(tmp_path / "ema"), x, t, ctx)
  assert rel_err(got, want) <= 1e-5  # linear_proj does not act outside the streaming hybrid mode
  np.testing.assert_array_equal(params["blocks"]["self_attn"]["linear_proj"]["weight"][1],
                                ema["blocks.1.self_attn.linear_proj.weight"].numpy())

  convert_dit(str(tmp_path / "model.pt"), str(tmp_path / "gen"), weights="generator", dtype="float32",
              progress=False)
  _, params = load_checkpoint(str(tmp_path / "gen"), "wan_dit", dtype=jnp.float32)
  np.testing.assert_array_equal(params["head"]["head"]["weight"], raw["head.head.weight"].numpy())


def test_convert_cli(tmp_path, reference):
  """The documented command line converts and writes the folder."""
  import subprocess
  import sys
  model, (x, t, ctx), want = reference
  model.save_pretrained(tmp_path / "src", safe_serialization=True)
  cmd = [sys.executable, "-m", "convert", f"--src={tmp_path}/src/diffusion_pytorch_model.safetensors",
         f"--out={tmp_path}/out", "--dtype=float32"]
  done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert done.returncode == 0, done.stderr
  got, _ = run_ours(str(tmp_path / "out"), x, t, ctx)
  assert rel_err(got, want) <= 1e-5
