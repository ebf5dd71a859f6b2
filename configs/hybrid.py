"""Stage dmd, phase 2 of Hybrid Forcing's decoupled distillation (paper Secs. 3.4-3.5), and the setting
`sample` streams with by default: sink 3 + window 9 latent frames, linear memory of evicted frames,
relative RoPE capped at 21, top-20% block-sparse softmax, Self-Forcing's warped 4-step schedule.

  python -m hybrid_forcing_jax.make_teacher_rollouts --config=configs/hybrid.py   # regulariser.source="records"
  python -m hybrid_forcing_jax.train --config=configs/hybrid.py --workdir=runs/hybrid
  python -m hybrid_forcing_jax.train --config=configs/hybrid.py:tiny --workdir=/tmp/hf   # CPU

Phase 2 against phase 1 (configs/self_forcing.py): the generator starts from phase 1's EMA export with
`linear_proj` added and set to ZERO, so it starts out as the phase-1 model (the published code's xavier
init made the branch live from step 0, defect D2); the critic, both optimiser states and the EMA restart
(the critic from the base model, as in the paper); rollouts of 21 to 54 frames with losses on the last
21; the teacher regulariser (Eq. 9, weight 0.05); LRs 1.5e-6 / 2e-7 (the released phase-2 config).

  from configs.hybrid import get_config
  cfg = get_config(); stream = hybrid_forcing_jax.streaming.config.from_config(cfg.stream)
"""
import ml_collections

from configs import self_forcing


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = self_forcing.get_config()
  c.stream.update(dict(sink_frames=3, window_frames=9, rope="relative", linear=True, sparse_ratio=0.2))
  c.model.checkpoint = "ckpt/self_forcing"   # phase 1's EMA export (runs/self_forcing/export/<step>)
  c.model.overrides = {"linear_proj": True}
  c.optim.lr = 1.5e-6
  c.dmd.update(dict(critic_lr=2e-7, max_frames=54))
  c.regulariser.weight = 0.05
  if variant == "tiny":
    self_forcing.make_tiny(c)
    c.dmd.max_frames = 12   # rollouts of one or two loss windows: the long-rollout path runs
  elif variant:
    raise ValueError(f"configs/hybrid.py: unknown variant {variant!r}; use '' or 'tiny'")
  return c
