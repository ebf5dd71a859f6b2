"""A tiny diffusers AutoencoderKLWan with random weights, its Wan-format state dict, and references."""
from __future__ import annotations

import numpy as np
import pytest
torch = pytest.importorskip("torch")  # the test extra; without it this module is skipped
AutoencoderKLWan = pytest.importorskip("diffusers").AutoencoderKLWan

from convert.wan_vae import diffusers_table
from hybrid_forcing_jax.vae import tiny_vae_config
from tests.torch_reference import perturb_parameters

CONFIG = tiny_vae_config()  # base dim 8, multipliers 1,2,4,4, 2 blocks per level, z_dim 16


def tiny_diffusers_vae(seed: int = 0) -> AutoencoderKLWan:
  torch.manual_seed(seed)
  c = CONFIG
  model = AutoencoderKLWan(base_dim=c.base_dim, z_dim=c.z_dim, dim_mult=list(c.dim_mult),
                           num_res_blocks=c.num_res_blocks, temperal_downsample=list(c.temporal_downsample),
                           latents_mean=list(c.latents_mean), latents_std=list(c.latents_std))
  return perturb_parameters(model, 0.1)


def original_state_dict(model: AutoencoderKLWan) -> dict[str, torch.Tensor]:
  """Wan's original names, by our diffusers table (checked independently against diffusers' own
  original->diffusers converter in the tests)."""
  c = CONFIG
  table = diffusers_table(len(c.dim_mult), c.num_res_blocks)
  return {table.rename(k): v.detach().clone() for k, v in model.state_dict().items()}


def latents(seed: int, batch: int = 1, frames: int = 6, height: int = 4, width: int = 6) -> np.ndarray:
  """Normalised latents, channels-last."""
  rng = np.random.default_rng(seed)
  return rng.standard_normal((batch, frames, height, width, CONFIG.z_dim)).astype(np.float32)


def video(seed: int, batch: int = 1, frames: int = 9, height: int = 16, width: int = 24) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, (batch, frames, height, width, 3)).astype(np.float32)


def _to_torch(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 4, 1, 2, 3)


def _to_numpy(x: torch.Tensor) -> np.ndarray:
  return x.permute(0, 2, 3, 4, 1).numpy()


def diffusers_decode(model: AutoencoderKLWan, z: np.ndarray, clamp: bool = True) -> np.ndarray:
  """AutoencoderKLWan._decode of de-normalised latents (z * std + mean, as Wan's pipelines do);
  clamp=False runs the same frame-by-frame loop without the final clamp, for a sharper check."""
  c = CONFIG
  mean = torch.tensor(c.latents_mean).view(1, -1, 1, 1, 1)
  std = torch.tensor(c.latents_std).view(1, -1, 1, 1, 1)
  zt = _to_torch(z) * std + mean
  with torch.no_grad():
    if clamp:
      return _to_numpy(model.decode(zt).sample)
    model.clear_cache()
    x = model.post_quant_conv(zt)
    outs = []
    for i in range(x.shape[2]):
      model._conv_idx = [0]
      outs.append(model.decoder(x[:, :, i:i + 1], feat_cache=model._feat_map, feat_idx=model._conv_idx,
                                first_chunk=i == 0))
    model.clear_cache()
    return _to_numpy(torch.cat(outs, 2))


def diffusers_encode(model: AutoencoderKLWan, video: np.ndarray) -> np.ndarray:
  """Normalised posterior means, (mu - mean) / std."""
  c = CONFIG
  with torch.no_grad():
    mu = model.encode(_to_torch(video)).latent_dist.mean
  mean = torch.tensor(c.latents_mean).view(1, -1, 1, 1, 1)
  std = torch.tensor(c.latents_std).view(1, -1, 1, 1, 1)
  return _to_numpy((mu - mean) / std)
