"""On a GPU: the DiT with cuDNN attention (bf16) matches the XLA reference backend, in both layouts.

  python -m pytest -q -m gpu tests/test_dit_gpu.py
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybrid_forcing_jax.config import tiny_config
from hybrid_forcing_jax.dit import AttentionLayout, WanDiT, init_params


@pytest.mark.gpu
@pytest.mark.parametrize("layout", [AttentionLayout(), AttentionLayout.block_causal(3)])
def test_cudnn_matches_xla_reference(layout):
  config = tiny_config(dim=256, num_heads=2, ffn_dim=512, num_layers=3)  # head_dim 128 as in Wan
  params = init_params(config, jax.random.key(0))
  params["head"]["head"]["weight"] = jax.random.normal(jax.random.key(1), params["head"]["head"]["weight"].shape,
                                                       jnp.bfloat16) * 0.05
  k = jax.random.split(jax.random.key(2), 3)
  x = jax.random.normal(k[0], (2, 9, 16, 24, config.in_dim), jnp.bfloat16)
  t = jax.random.uniform(k[1], (2, 9), maxval=1000.0)
  ctx = jax.random.normal(k[2], (2, 16, config.text_dim), jnp.bfloat16)
  outs = {}
  for backend in ("cudnn", "xla"):
    model = WanDiT(config, attention_backend=backend)
    outs[backend] = np.asarray(model.apply({"params": params}, x, t, ctx, layout=layout), np.float32)
  ref = outs["xla"]
  err = np.linalg.norm(outs["cudnn"] - ref) / np.linalg.norm(ref)
  assert np.isfinite(outs["cudnn"]).all()
  assert err < 2e-2, err
