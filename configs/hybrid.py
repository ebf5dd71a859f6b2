"""Hybrid Forcing's streaming setting (the paper's): sink 3 + window 9 frames, linear memory of every
evicted frame, top-20% block-sparse softmax, relative temporal RoPE capped at 21.

  python -m hybrid_forcing_jax.sample --config=configs/hybrid.py ...
Override any field on the command line, e.g. --config.stream.sparse_ratio=0.3.
"""
import dataclasses

import ml_collections

from hybrid_forcing_jax.streaming.config import HYBRID


def get_config():
  config = ml_collections.ConfigDict()
  config.stream = ml_collections.ConfigDict(dataclasses.asdict(HYBRID))
  return config
