"""The bidirectional teacher's sampler: N Euler steps of the flow ODE with x0-space CFG, keeping the
trajectory at chosen steps (the ODE pairs of ODE-init regression, training_spec.md 1)."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hybrid_forcing_jax import flow
from hybrid_forcing_jax.dit import WanDiT
from hybrid_forcing_jax.training.guidance import cfg_x0


def check_keep(keep: Sequence[int], num_steps: int) -> tuple[int, ...]:
  """keep: strictly increasing trajectory indices in [0, num_steps] (0 = the noise, num_steps = the
  final sample)."""
  keep = tuple(int(k) for k in keep)
  if not keep or any(b <= a for a, b in zip(keep, keep[1:])) or keep[0] < 0 or keep[-1] > num_steps:
    raise ValueError(f"keep {keep} must be strictly increasing indices in [0, num_steps={num_steps}]")
  return keep


def kept_timesteps(num_steps: int, shift: float, keep: Sequence[int]) -> np.ndarray:
  """The timestep (1000 sigma) of each kept trajectory latent, float64 [len(keep)]."""
  return flow.NUM_TRAIN_TIMESTEPS * flow.euler_sigmas(num_steps, shift)[list(check_keep(keep, num_steps))]


def euler_trajectory(model: WanDiT, params, noise, cond_kv, uncond_kv, *, num_steps: int, shift: float,
                     guidance: float, keep: Sequence[int], known=None):
  """Sample from noise [B, F, h, w, C] with `num_steps` Euler steps over flow.euler_sigmas(num_steps,
  shift): per step the guided x0 (guidance.cfg_x0), the velocity it implies, one Euler step; latents
  in float32. Returns the trajectory at `keep`, float32 [B, len(keep), F, h, w, C], where index i is
  the latent before step i and num_steps the final sample. A `jax.lax.scan` over the steps.

  known: optional float32 [B, n, h, w, C], the first n latent frames to hold (inpainting by replacement):
  before every step they are set to `known` noised to the step's sigma with the sample's own noise (the
  point of the straight noise-to-`known` path the sampler itself would be at), so the model denoises the
  other frames in their context at the noise level it was trained on; at sigma 0 they are `known`."""
  keep = check_keep(keep, num_steps)
  sigmas = flow.euler_sigmas(num_steps, shift).astype(np.float32)
  slot = np.full(num_steps + 1, -1, np.int32)  # trajectory index -> its row of the kept buffer, or -1
  slot[list(keep)] = np.arange(len(keep))
  b = noise.shape[0]

  def store(kept, row, x):
    return jax.lax.cond(row >= 0, lambda k: jax.lax.dynamic_update_index_in_dim(k, x, row, 0), lambda k: k, kept)

  def hold(x, sigma):
    if known is None:
      return x
    return x.at[:, :known.shape[1]].set(flow.add_noise(known, noise[:, :known.shape[1]].astype(jnp.float32), sigma))

  def step(carry, schedule):
    x, kept = carry
    sigma, sigma_next, row = schedule
    x = hold(x, sigma)
    kept = store(kept, row, x)
    t = jnp.full((b,), flow.NUM_TRAIN_TIMESTEPS * sigma)
    x0 = cfg_x0(model, params, x, t, cond_kv, uncond_kv, guidance)
    x = flow.euler_step(x, flow.velocity_from_x0(x, x0, sigma), sigma, sigma_next)
    return (x, kept), None

  x = noise.astype(jnp.float32)
  kept = jnp.zeros((len(keep),) + x.shape, jnp.float32)
  (x, kept), _ = jax.lax.scan(step, (x, kept), (sigmas[:-1], sigmas[1:], slot[:-1]))
  kept = store(kept, slot[-1], hold(x, 0.0))
  return jnp.moveaxis(kept, 0, 1)
