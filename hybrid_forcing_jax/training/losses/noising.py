"""The noisy copy of a generated video that DMD's two scores and the critic's loss see (training_spec.md 2).

Self-Forcing draws one t per video, u = randint(0, 1000) / 1000, t = 1000 shift(u) clamped to
[20, 980], and noises every frame to it: x_t = (1 - sigma) x + sigma eps. Its scheduler then snaps t to
the nearest entry of its 1000-entry table; here sigma = t / 1000 exactly and u is continuous (the same
law up to the table's resolution). The video comes in detached: neither loss differentiates x_t.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from hybrid_forcing_jax import flow


def noise_video(video, rng, *, shift: float, t_min: float, t_max: float):
  """video [B, F, h, w, C] -> (x_t float32 [B, F, h, w, C], t float32 [B, F], eps float32 [B, F, h, w, C]).

  t is one value per sample, repeated over its frames (the DiT takes per-frame timesteps).
  """
  key_t, key_eps = jax.random.split(rng)
  b, f = video.shape[:2]
  t = flow.sample_training_timestep(jax.random.uniform(key_t, (b,), jnp.float32), shift, t_min, t_max)
  eps = jax.random.normal(key_eps, video.shape, jnp.float32)
  x_t = flow.add_noise(jax.lax.stop_gradient(video).astype(jnp.float32), eps, t / flow.NUM_TRAIN_TIMESTEPS)
  return x_t, jnp.broadcast_to(t[:, None], (b, f)), eps
