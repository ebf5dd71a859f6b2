"""Self-Forcing's dense streaming setting: no sink, a 21-frame window, absolute RoPE, no linear memory,
no sparsity (reproduces Self-Forcing's sampler).

  python -m hybrid_forcing_jax.sample --config=configs/self_forcing.py ...
"""
import dataclasses

import ml_collections

from hybrid_forcing_jax.streaming.config import SELF_FORCING


def get_config():
  config = ml_collections.ConfigDict()
  config.stream = ml_collections.ConfigDict(dataclasses.asdict(SELF_FORCING))
  return config
