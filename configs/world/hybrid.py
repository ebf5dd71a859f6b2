"""Stage dmd, phase 2 on the world: configs/hybrid.py (hybrid attention, linear memory added at zero,
rollouts of 21 to 54 frames through the pixel codec, the teacher regulariser) with the world's models,
text, prompts and geometry (configs/world/common.py); the generator starts from the world phase-1 export.

  python -m hybrid_forcing_jax.train --config=configs/world/hybrid.py --workdir=runs/world/hybrid
"""
import ml_collections

from configs import hybrid, self_forcing
from configs.world import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  size, _ = common.parse_variant(variant)
  c = hybrid.get_config(size)
  common.apply_world(c, variant, model=common.export(variant, "self_forcing", self_forcing.get_config().train.steps))
  return c
