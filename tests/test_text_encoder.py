"""The Flax umT5 encoder, loaded through the converter, equals transformers' UMT5EncoderModel (float32);
bad checkpoints and inputs fail with errors that say what is wrong."""
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
torch = pytest.importorskip("torch")  # the test extra; without it this module is skipped
from safetensors.torch import save_file
from transformers import UMT5Config as HFConfig
from transformers import UMT5EncoderModel

from convert.umt5 import TRANSFORMERS_TABLE, convert_umt5
from hybrid_forcing_jax.checkpoint import load_checkpoint
from hybrid_forcing_jax.text_encoder import (UMT5Encoder, UMT5_XXL, TextEncoder, relative_position_buckets,
                                             tiny_umt5_config)
from tests.torch_reference import perturb_parameters

CONFIG = tiny_umt5_config()  # dim 32, 4 heads of 6 (dim_attn 24), ffn 64, 3 layers, vocab 100, max_distance 20
LENGTH = 40  # > max_distance, so the logarithmic and the clamped buckets are both exercised


def tiny_hf_model(config=CONFIG, seed=0) -> UMT5EncoderModel:
  torch.manual_seed(seed)
  hf = HFConfig(vocab_size=config.vocab_size, d_model=config.dim, d_kv=config.head_dim, d_ff=config.ffn_dim,
                num_layers=config.num_layers, num_heads=config.num_heads,
                relative_attention_num_buckets=config.num_buckets,
                relative_attention_max_distance=config.max_distance, layer_norm_epsilon=config.eps,
                feed_forward_proj="gated-gelu", dropout_rate=0.0)
  hf._attn_implementation = "eager"  # the plain reference formula
  model = UMT5EncoderModel(hf)
  return perturb_parameters(model, 0.2)


def wan_state_dict(model) -> dict:
  """Wan's original T5Encoder names, through our transformers table (tied embedding once)."""
  return {TRANSFORMERS_TABLE.rename(k): v.detach().clone() for k, v in model.state_dict().items()
          if k != "encoder.embed_tokens.weight"}


def inputs(seed=1, batch=3):
  rng = np.random.default_rng(seed)
  ids = rng.integers(2, CONFIG.vocab_size, (batch, LENGTH))
  lengths = np.array([LENGTH, 17, 1])[:batch]
  mask = (np.arange(LENGTH)[None] < lengths[:, None]).astype(np.int64)
  ids = np.where(mask > 0, ids, 0)
  ids[np.arange(batch), lengths - 1] = 1  # </s> ends each prompt, as the tokenizer does
  return ids, mask


def hf_forward(model, ids, mask):
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()


def rel_err(a, b):
  return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def run_ours(folder, ids, mask, dtype=jnp.float32):
  config, params = load_checkpoint(folder, "umt5", dtype=dtype)
  return np.asarray(UMT5Encoder(config, dtype, dtype).apply({"params": params}, ids, mask), np.float32)


def check_against(got, want, mask):
  keep = mask.astype(bool)
  assert got.shape == want.shape
  assert rel_err(got[keep], want[keep]) <= 1e-4
  assert not got[~keep].any()  # padding rows are zero (Self-Forcing's convention)


@pytest.fixture(scope="module")
def reference():
  model = tiny_hf_model()
  ids, mask = inputs()
  return model, (ids, mask), hf_forward(model, ids, mask)


def test_buckets_equal_transformers():
  from transformers.models.umt5.modeling_umt5 import UMT5Attention
  for cfg, length in ((UMT5_XXL, 512), (CONFIG, LENGTH)):
    hf = HFConfig(relative_attention_num_buckets=cfg.num_buckets, relative_attention_max_distance=cfg.max_distance,
                  d_model=8, d_kv=2, num_heads=4)
    attn = UMT5Attention(hf, has_relative_attention_bias=True)
    rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    want = attn._relative_position_bucket(rel).numpy()
    np.testing.assert_array_equal(relative_position_buckets(length, cfg.num_buckets, cfg.max_distance), want)


def test_transformers_format(tmp_path, reference):
  model, (ids, mask), want = reference
  model.save_pretrained(tmp_path / "src", safe_serialization=True)
  config = convert_umt5(str(tmp_path / "src" / "model.safetensors"), str(tmp_path / "out"), dtype="float32",
                        progress=False)
  assert config == CONFIG  # max_distance and eps from the config.json beside the weights
  check_against(run_ours(str(tmp_path / "out"), ids, mask), want, mask)


def test_transformers_bin_with_tied_copy(tmp_path, reference):
  """A `pytorch_model.bin` holding both copies of the tied embedding converts; unequal copies fail."""
  model, (ids, mask), want = reference
  state = {k: v.clone() for k, v in model.state_dict().items()}
  state["encoder.embed_tokens.weight"] = state["shared.weight"].clone()
  torch.save(state, tmp_path / "pytorch_model.bin")
  with open(tmp_path / "config.json", "w") as f:
    json.dump(model.config.to_dict(), f)
  convert_umt5(str(tmp_path / "pytorch_model.bin"), str(tmp_path / "out"), dtype="float32", progress=False)
  check_against(run_ours(str(tmp_path / "out"), ids, mask), want, mask)
  state["encoder.embed_tokens.weight"] += 1
  torch.save(state, tmp_path / "pytorch_model.bin")
  with pytest.raises(ValueError, match="differ"):
    convert_umt5(str(tmp_path / "pytorch_model.bin"), str(tmp_path / "bad"), progress=False)


def test_wan_format_pth_bf16_storage(tmp_path, reference):
  """Wan's `models_t5_umt5-xxl-enc-bf16.pth`: a bare state dict; default storage is bf16 matmuls."""
  model, (ids, mask), want = reference
  state = wan_state_dict(model)
  assert "blocks.2.ffn.gate.0.weight" in state and "blocks.1.pos_embedding.embedding.weight" in state
  torch.save(state, tmp_path / "models_t5_umt5-xxl-enc-fp32.pth")
  # No config.json beside Wan's file, so max_distance is umT5's 128; the tiny reference uses 20, which
  # is set in the converted folder's config before comparing outputs.
  config = convert_umt5(str(tmp_path / "models_t5_umt5-xxl-enc-fp32.pth"), str(tmp_path / "f32"),
                        dtype="float32", progress=False)
  assert config == tiny_umt5_config(max_distance=128)
  meta_path = tmp_path / "f32" / "config.json"
  meta = json.loads(meta_path.read_text())
  meta["config"]["max_distance"] = CONFIG.max_distance  # the tiny reference's value
  meta_path.write_text(json.dumps(meta))
  check_against(run_ours(str(tmp_path / "f32"), ids, mask), want, mask)

  bf16 = {k: v.to(torch.bfloat16) for k, v in state.items()}
  torch.save(bf16, tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
  convert_umt5(str(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"), str(tmp_path / "bf16"), progress=False)
  config, params = load_checkpoint(str(tmp_path / "bf16"), "umt5")
  assert params["blocks"]["attn"]["q"]["weight"].dtype == jnp.bfloat16
  assert params["token_embedding"]["weight"].dtype == jnp.bfloat16
  assert params["blocks"]["norm1"]["weight"].dtype == jnp.float32
  assert params["blocks"]["pos_embedding"]["embedding"]["weight"].dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(params["blocks"]["ffn"]["fc2"]["weight"][2], np.float32),
                                bf16["blocks.2.ffn.fc2.weight"].float().numpy())


def test_bf16_compute_close(tmp_path, reference):
  model, (ids, mask), want = reference
  model.save_pretrained(tmp_path / "src", safe_serialization=True)
  convert_umt5(str(tmp_path / "src" / "model.safetensors"), str(tmp_path / "out"), progress=False)
  encoder = TextEncoder.from_checkpoint(str(tmp_path / "out"))
  out = encoder.encode_ids(ids, mask)
  assert out.dtype == jnp.bfloat16 and out.shape == (3, LENGTH, CONFIG.dim)
  keep = mask.astype(bool)
  assert rel_err(np.asarray(out, np.float32)[keep], want[keep]) < 3e-2


def test_convert_cli(tmp_path, reference):
  model, (ids, mask), want = reference
  model.save_pretrained(tmp_path / "src", safe_serialization=True)
  cmd = [sys.executable, "-m", "convert", "--model=t5", f"--src={tmp_path}/src/model.safetensors",
         f"--out={tmp_path}/out", "--dtype=float32"]
  done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert done.returncode == 0, done.stderr
  check_against(run_ours(str(tmp_path / "out"), ids, mask), want, mask)


# ---- errors ----

def test_dit_checkpoint_is_rejected(tmp_path):
  save_file({"blocks.0.self_attn.q.weight": torch.zeros(4, 4)}, str(tmp_path / "dit.safetensors"))
  with pytest.raises(ValueError, match="DiT checkpoint"):
    convert_umt5(str(tmp_path / "dit.safetensors"), str(tmp_path / "out"), progress=False)


def test_t5_with_shared_bias_is_rejected(tmp_path, reference):
  model, _, _ = reference
  state = wan_state_dict(model)
  for i in range(1, CONFIG.num_layers):
    del state[f"blocks.{i}.pos_embedding.embedding.weight"]
  torch.save(state, tmp_path / "t5.pth")
  with pytest.raises(ValueError, match="T5 checkpoint"):
    convert_umt5(str(tmp_path / "t5.pth"), str(tmp_path / "out"), progress=False)


def test_extra_missing_and_misshapen_keys_are_named(tmp_path, reference):
  model, _, _ = reference
  state = wan_state_dict(model)
  extra = dict(state, **{"head.weight": torch.zeros(3)})
  torch.save(extra, tmp_path / "extra.pth")
  with pytest.raises(ValueError, match="head.weight"):
    convert_umt5(str(tmp_path / "extra.pth"), str(tmp_path / "out"), progress=False)
  missing = {k: v for k, v in state.items() if k != "blocks.1.ffn.fc1.weight"}
  torch.save(missing, tmp_path / "missing.pth")
  with pytest.raises(ValueError, match=r"blocks\.1\.ffn\.fc1\.weight"):
    convert_umt5(str(tmp_path / "missing.pth"), str(tmp_path / "out"), progress=False)
  bad = dict(state, **{"blocks.2.attn.v.weight": torch.zeros(5, CONFIG.dim)})
  torch.save(bad, tmp_path / "bad.pth")
  with pytest.raises(ValueError, match=r"blocks\.2\.attn\.v\.weight.*shape"):
    convert_umt5(str(tmp_path / "bad.pth"), str(tmp_path / "out"), progress=False)


def test_full_t5_model_is_rejected(tmp_path, reference):
  """A whole encoder-decoder checkpoint: the decoder keys are named as not part of the format."""
  model, _, _ = reference
  state = dict(model.state_dict())
  state["decoder.final_layer_norm.weight"] = torch.ones(CONFIG.dim)
  save_file({k: v.contiguous() for k, v in state.items() if k != "encoder.embed_tokens.weight"},
            str(tmp_path / "model.safetensors"))
  with pytest.raises(ValueError, match="decoder.final_layer_norm.weight"):
    convert_umt5(str(tmp_path / "model.safetensors"), str(tmp_path / "out"), progress=False)


def test_load_as_wrong_kind(tmp_path, reference):
  model, _, _ = reference
  model.save_pretrained(tmp_path / "src", safe_serialization=True)
  convert_umt5(str(tmp_path / "src" / "model.safetensors"), str(tmp_path / "out"), progress=False)
  with pytest.raises(ValueError, match="'umt5' checkpoint, not 'wan_dit'"):
    load_checkpoint(str(tmp_path / "out"), "wan_dit")


def test_bad_inputs(tmp_path, reference):
  model, (ids, mask), _ = reference
  model.save_pretrained(tmp_path / "src", safe_serialization=True)
  convert_umt5(str(tmp_path / "src" / "model.safetensors"), str(tmp_path / "out"), progress=False)
  encoder = TextEncoder.from_checkpoint(str(tmp_path / "out"))
  with pytest.raises(ValueError, match="outside the vocabulary"):
    encoder.encode_ids(np.where(mask > 0, ids, CONFIG.vocab_size), mask)
  with pytest.raises(ValueError, match="outside the vocabulary"):
    encoder.encode_ids(-ids, mask)
  with pytest.raises(ValueError, match=r"\[B, L\]"):
    encoder.encode_ids(ids[0], mask[0])
  with pytest.raises(ValueError, match=r"\[B, L\]"):
    encoder.encode_ids(ids, mask[:, :5])
  with pytest.raises(ValueError, match="no tokenizer"):
    encoder.encode("a prompt")
  config, params = load_checkpoint(str(tmp_path / "out"), "umt5", dtype=jnp.float32)
  module = UMT5Encoder(config, jnp.float32, jnp.float32)
  with pytest.raises(ValueError, match="integer"):
    module.apply({"params": params}, ids.astype(np.float32), mask)
  with pytest.raises(ValueError, match="outside the vocabulary"):
    module.apply({"params": params}, ids + CONFIG.vocab_size, mask)
