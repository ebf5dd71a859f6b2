"""The training state: one pytree that checkpoints, shards and passes through the jitted step."""
from __future__ import annotations

from typing import Any

from flax import struct


@struct.dataclass
class TrainState:
  """step: updates done (int32 scalar); params: fp32 master weights of the generator; opt_state: its
  optimiser state; ema: fp32 EMA of the generator (a copy of params until ema_start); rng: the run's
  base key (each step folds in the step and the example index); critic / critic_opt_state: DMD's fake
  score and its optimiser state (None outside DMD)."""
  step: Any
  params: Any
  opt_state: Any
  ema: Any
  rng: Any
  critic: Any = None
  critic_opt_state: Any = None
