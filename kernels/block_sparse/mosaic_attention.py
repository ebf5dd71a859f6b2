"""Hopper (sm_90) block-sparse attention forward on Pallas Mosaic GPU. (work in progress)"""
from __future__ import annotations

AVAILABLE = False

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class MosaicConfig:
  max_concurrent_steps: int = 2


DEFAULT_CONFIG = MosaicConfig()


def check_supported(dtype, head_dim):
  from kernels.block_sparse.api import UnsupportedError
  raise UnsupportedError("block-sparse backend 'pallas_mosaic' is not available in this build")


def forward(q, k, v, table, *, plan, config):
  raise NotImplementedError
