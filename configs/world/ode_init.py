"""Stage ode_init on the world: configs/ode_init.py with the world's models, text, prompts and geometry
(configs/world/common.py). The teacher is the world teacher's export, and the student starts from it
too (as Self-Forcing's student starts from the 1.3B it distils).

  python -m hybrid_forcing_jax.make_ode_pairs --config=configs/world/ode_init.py
  python -m hybrid_forcing_jax.train --config=configs/world/ode_init.py --workdir=runs/world/ode_init
"""
import ml_collections

from configs import ode_init
from configs.world import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  size, _ = common.parse_variant(variant)
  c = ode_init.get_config(size)
  common.apply_world(c, variant, model=common.export(variant, "teacher", common.TEACHER_STEPS))
  return c
