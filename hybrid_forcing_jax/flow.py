"""Flow matching, in one place: the sigma table and its shift, the warped few-step schedule, and the
algebra between a clean latent x0, noise eps, the noisy x_t and the predicted velocity.

Wan's rectified flow (`FlowMatchScheduler` of Wan / Self-Forcing, training_spec.md 1-2):
  x_t = (1 - sigma) x0 + sigma eps,      velocity v = eps - x0,      t = num_train_timesteps * sigma,
so x0 = x_t - sigma v. The shift warps a uniform s in [0, 1] to sigma = k s / (1 + (k - 1) s).
Every caller (the streaming sampler, the ODE pairs, every loss and the tests) uses these functions.
"""
from __future__ import annotations

import numpy as np
import jax.numpy as jnp

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigma(s, shift: float):
  """sigma = shift s / (1 + (shift - 1) s), for numpy or jax arrays (or floats)."""
  return shift * s / (1 + (shift - 1) * s)


def sigma_table(shift: float, n: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
  """The training table of n sigmas, shift(linspace(1, 0, n + 1)[:-1]), float64, from 1 down to ~1/n."""
  return shift_sigma(np.linspace(1.0, 0.0, n + 1)[:-1], shift)


def warp(steps, shift: float, n: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
  """Self-Forcing's `warp_denoising_step`: step k reads index n - k of the timestep table with a 0
  appended, so [1000, 750, 500, 250] -> [1000, 937.5, 833.33, 625] at shift 5. Timesteps, float64."""
  table = np.concatenate([n * sigma_table(shift, n), [0.0]])
  return table[n - np.asarray(steps, np.int64)]


def euler_sigmas(num_steps: int, shift: float) -> np.ndarray:
  """The N-step Euler sampler's sigmas, shift(linspace(1, 0, N + 1)[:-1]) followed by the final 0
  (Wan's `FlowMatchScheduler(extra_one_step=True)`): [N + 1] float64, step i goes sigma[i] -> sigma[i+1]."""
  return np.concatenate([shift_sigma(np.linspace(1.0, 0.0, num_steps + 1)[:-1], shift), [0.0]])


def sample_training_timestep(u, shift: float, t_min: float = 20.0, t_max: float = 980.0,
                             n: int = NUM_TRAIN_TIMESTEPS):
  """DMD's / the critic's t (training_spec.md 2): u uniform in [0, 1) -> t = n shift(u), clamped to
  [t_min, t_max]. Self-Forcing draws randint(0, n) / n for u; a continuous u is the same law at n = inf."""
  return jnp.clip(n * shift_sigma(u, shift), t_min, t_max)


def add_noise(x0, eps, sigma):
  """x_t = (1 - sigma) x0 + sigma eps; sigma broadcasts from the left-aligned batch/frame axes."""
  sigma = _expand(sigma, x0)
  return (1 - sigma) * x0 + sigma * eps


def x0_from_velocity(x_t, v, sigma):
  """x0 = x_t - sigma v."""
  return x_t - _expand(sigma, x_t) * v


def velocity_from_x0(x_t, x0, sigma):
  """v = (x_t - x0) / sigma (sigma > 0): what a model that predicts x0 implies for the velocity."""
  return (x_t - x0) / _expand(sigma, x_t)


# A model that predicts x0 implies v = (x_t - x0) / sigma; below this sigma the division uses it instead (JiT's
# clip of 1 - t at 0.05, Li & He 2025), so the implied velocity, and the flow-matching loss's weight on the x0
# error (1 / sigma^2), stay bounded as sigma -> 0.
X0_PREDICTION_SIGMA_MIN = 0.05


def velocity_from_predicted_x0(x_t, x0, sigma):
  """v = (x_t - x0) / max(sigma, X0_PREDICTION_SIGMA_MIN): the velocity of an x0-predicting model."""
  return velocity_from_x0(x_t, x0, jnp.maximum(jnp.asarray(sigma, jnp.float32), X0_PREDICTION_SIGMA_MIN))


def velocity_target(x0, eps):
  """The flow-matching regression target, v = eps - x0."""
  return eps - x0


def euler_step(x_t, v, sigma, sigma_next):
  """One Euler step of the flow ODE from sigma to sigma_next."""
  return x_t + (_expand(sigma_next, x_t) - _expand(sigma, x_t)) * v


def _expand(sigma, x):
  """A scalar, [B] or [B, F] sigma as an array that broadcasts against x [B, F, ...]."""
  sigma = jnp.asarray(sigma) if not isinstance(sigma, (float, int, np.ndarray)) else sigma
  nd = np.ndim(sigma)
  if nd == 0:
    return sigma
  return sigma.reshape(sigma.shape + (1,) * (x.ndim - nd))
