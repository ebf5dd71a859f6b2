"""Stage flow_matching on the world (issue 12, "The pipeline" step 1): the world's bidirectional teacher,
trained from scratch by flow matching on world videos of the training length (81 frames, 21 latent frames
of 32x32x48 through the pixel codec; with the `frame` layout 21 frames, 21 latent frames of 32x32x12) with 10% of captions dropped to the empty prompt for CFG.

  python -m hybrid_forcing_jax.world.prepare --output=data/world          # text, codec, prompts
  python -m hybrid_forcing_jax.train --config=configs/world/teacher.py --workdir=runs/world/teacher
  python -m hybrid_forcing_jax.train --config=configs/world/teacher.py:tiny --workdir=/tmp/wt   # CPU
  python -m hybrid_forcing_jax.world.prepare --output=data/world_frame --temporal_factor=1   # layout `frame`
  python -m hybrid_forcing_jax.train --config=configs/world/teacher.py:frame --workdir=runs/world_frame/teacher

`world` holds the WorldConfig fields (the videos' distribution; evaluate_world reads it too). The
export (runs/world/teacher/export/<step>) is the teacher of configs/world/ode_init.py and the rest.
"""
import dataclasses

import ml_collections

from configs import ode_init
from configs.world import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  size, layout = common.parse_variant(variant)
  c = ml_collections.ConfigDict()
  c.stage = "flow_matching"
  c.model = ode_init.dit_section("", remat_policy="none")
  common.set_dit(c.model, "", layout)
  c.text = common.text(variant)
  world = common.world(variant)
  # Tuples stay tuples (not to_dict's JSON lists): ml_collections overrides them from the command line,
  # e.g. --config.world.long_memory_frames='(4, 8, 16)'.
  c.world = dataclasses.asdict(world)
  frames, hw = common.latent_geometry(variant)
  # 8 threads render and encode the videos (~10 ms each) ahead of the steps.
  c.data = ml_collections.ConfigDict(dict(codec=f"{common.data_folder(variant)}/codec", num_frames=frames, latent_hw=hw,
                                          batch_size=32, seed=0, num_workers=8))
  # Shift 5: the law of the 48 Euler steps make_ode_pairs samples the teacher with (ode_pairs.shift).
  c.flow_matching = ml_collections.ConfigDict(dict(shift=5.0, caption_dropout=0.1))
  # A small DiT from scratch: AdamW at 2e-4 after 500 warm-up steps, clip 1; EMA 0.999 from step 1000.
  c.optim = ml_collections.ConfigDict(dict(
      lr=2e-4, b1=0.9, b2=0.99, weight_decay=0.01, eps=1e-8, clip_norm=1.0, warmup_steps=500, grad_accum=1,
      ema_decay=0.999, ema_start=1000))
  c.train = ml_collections.ConfigDict(dict(
      steps=common.TEACHER_STEPS, seed=0, mesh=dict(data=-1, fsdp=1), log_every=50, checkpoint_every=500,
      keep_last=2, keep_every=0, export_every=500))
  if size == "tiny":
    make_tiny(c, variant)
  return c


def make_tiny(c: ml_collections.ConfigDict, variant: str) -> None:
  """The tiny world DiT (common.TINY_WORLD_DIT) in float32 (XLA attention) on the tiny world, batch 2, a few
  steps: CPU in seconds."""
  c.model.update(dict(preset="tiny", dtype="float32", attention_backend="xla"))
  c.model.overrides = {}
  common.set_dit(c.model, "", variant)
  c.data.update(dict(batch_size=2, num_workers=0))
  c.optim.update(dict(lr=2e-3, warmup_steps=10, clip_norm=10.0, ema_start=0))
  c.train.update(dict(steps=20, log_every=1, checkpoint_every=10, export_every=0))
