"""Tiny diffusers Wan transformers with random weights, written in each checkpoint format we convert."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
torch = pytest.importorskip("torch")  # the test extra; without it this module is skipped
WanTransformer3DModel = pytest.importorskip("diffusers").WanTransformer3DModel
from safetensors.torch import save_file

from convert.wan_dit import DIFFUSERS_TABLE
from hybrid_forcing_jax.config import tiny_config
from tests.torch_reference import perturb_parameters

CONFIG = tiny_config()  # dim 48, 2 heads of 24, 2 layers, in/out 4 channels, text_dim 32, freq_dim 16


def tiny_diffusers_model(seed: int = 0) -> WanTransformer3DModel:
  torch.manual_seed(seed)
  c = CONFIG
  model = WanTransformer3DModel(
      patch_size=c.patch_size, num_attention_heads=c.num_heads, attention_head_dim=c.head_dim,
      in_channels=c.in_dim, out_channels=c.out_dim, text_dim=c.text_dim, freq_dim=c.freq_dim, ffn_dim=c.ffn_dim,
      num_layers=c.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=c.eps)
  return perturb_parameters(model, 0.2)


def original_state_dict(model: WanTransformer3DModel) -> dict[str, torch.Tensor]:
  """Wan's original names, by our diffusers table (checked independently against diffusers' own
  original->diffusers converter in the tests)."""
  return {DIFFUSERS_TABLE.rename(k): v.detach().clone() for k, v in model.state_dict().items()}


def write_sharded(state: dict[str, torch.Tensor], folder: str, shards: int = 2) -> str:
  """Save as `diffusion_pytorch_model-0000i-of-0000n.safetensors` plus the index; returns the index path."""
  os.makedirs(folder, exist_ok=True)
  keys = sorted(state)
  weight_map = {}
  for i in range(shards):
    name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
    part = {k: state[k].contiguous() for k in keys[i::shards]}
    save_file(part, os.path.join(folder, name))
    weight_map.update({k: name for k in part})
  index = os.path.join(folder, "diffusion_pytorch_model.safetensors.index.json")
  with open(index, "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump({"num_heads": CONFIG.num_heads, "dim": CONFIG.dim}, f)
  return index


def inputs(seed: int, batch: int = 2, frames: int = 3, height: int = 4, width: int = 6, text_len: int = 7):
  """Channels-last latents, per-frame timesteps that differ across frames, and text embeddings."""
  rng = np.random.default_rng(seed)
  c = CONFIG
  x = rng.standard_normal((batch, frames, height, width, c.in_dim)).astype(np.float32)
  t = rng.uniform(0, 1000, (batch, frames)).astype(np.float32)
  ctx = rng.standard_normal((batch, text_len, c.text_dim)).astype(np.float32)
  return x, t, ctx


def diffusers_forward(model: WanTransformer3DModel, x, t, ctx) -> np.ndarray:
  """diffusers takes [B, C, F, H, W] and per-token timesteps; per-frame t becomes per-token."""
  _, f, h, w, _ = x.shape
  ph, pw = CONFIG.patch_size[1:]
  t_tokens = np.repeat(t, (h // ph) * (w // pw), axis=1)
  with torch.no_grad():
    out = model(torch.from_numpy(x).permute(0, 4, 1, 2, 3), torch.from_numpy(t_tokens),
                 torch.from_numpy(ctx), return_dict=False)[0]
  return out.permute(0, 2, 3, 4, 1).numpy()
