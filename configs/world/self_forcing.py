"""Stage dmd, phase 1 on the world: configs/self_forcing.py with the world's models, text, prompts and
geometry (configs/world/common.py); the generator starts from the world ODE-init export, the teacher and
the critic from the world teacher's.

  python -m hybrid_forcing_jax.train --config=configs/world/self_forcing.py --workdir=runs/world/self_forcing
"""
import ml_collections

from configs import ode_init, self_forcing
from configs.world import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  size, _ = common.parse_variant(variant)
  c = self_forcing.get_config(size)
  common.apply_world(c, variant, model=common.export(variant, "ode_init", ode_init.get_config().train.steps))
  return c
