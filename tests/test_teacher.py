"""The teacher's sampler: x0-space CFG and the Euler trajectory, against NumPy on the model's outputs."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybrid_forcing_jax.config import tiny_config
from hybrid_forcing_jax.dit import WanDiT, init_params
from hybrid_forcing_jax.training.guidance import cfg_x0, text_kv
from hybrid_forcing_jax.training.teacher import euler_trajectory, kept_timesteps

CONFIG = tiny_config()
LATENT = (3, 4, 4, CONFIG.in_dim)
TEXT_LEN = 5


@pytest.fixture(scope="module")
def teacher():
  model = WanDiT(CONFIG, dtype=jnp.float32, param_dtype=jnp.float32, attention_backend="xla")
  keys = jax.random.split(jax.random.key(0), 5)
  params = jax.jit(lambda k: init_params(CONFIG, k, param_dtype=jnp.float32))(keys[0])
  # Wan zero-initialises the head: random weights there make the velocity (and the test) non-trivial.
  head = params["head"]["head"]["weight"]
  params["head"]["head"]["weight"] = 0.3 * jax.random.normal(keys[1], head.shape)
  cond = jax.random.normal(keys[2], (2, TEXT_LEN, CONFIG.text_dim))
  uncond = jax.random.normal(keys[3], (1, TEXT_LEN, CONFIG.text_dim))
  noise = jax.random.normal(keys[4], (2, *LATENT))
  return model, params, cond, uncond, noise


def velocity(model, params, x, t, context):
  """One plain forward per branch (no batching of cond and uncond), as float64 NumPy."""
  context = jnp.broadcast_to(context, (x.shape[0], *context.shape[1:]))
  return np.asarray(_forward(model, params, jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32), context),
                    np.float64)


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, x, t, context):
  return model.apply({"params": params}, x, t, context)


@pytest.mark.parametrize("per_frame", [False, True])
def test_cfg_x0_is_guidance_in_x0_space(teacher, per_frame):
  model, params, cond, uncond, noise = teacher
  t = jnp.array([[900.0, 700.0, 500.0], [300.0, 200.0, 100.0]]) if per_frame else jnp.array([800.0, 250.0])
  sigma = np.asarray(t, np.float64).reshape(2, -1, 1, 1, 1) / 1000
  x = np.asarray(noise, np.float64)
  x0_c = x - sigma * velocity(model, params, x, t, cond)
  x0_u = x - sigma * velocity(model, params, x, t, uncond)
  guided = jax.jit(lambda p, s: cfg_x0(model, p, noise, t, text_kv(model, p, cond), text_kv(model, p, uncond), s))
  for scale in (0.0, 1.0, 4.5):
    got = np.asarray(guided(params, scale))
    np.testing.assert_allclose(got, x0_u + scale * (x0_c - x0_u), rtol=1e-5, atol=1e-5)


def test_euler_trajectory_equals_a_numpy_loop(teacher):
  model, params, cond, uncond, noise = teacher
  num_steps, shift, guidance, keep = 4, 5.0, 3.0, (0, 1, 3, 4)
  got = jax.jit(lambda p, n: euler_trajectory(model, p, n, text_kv(model, p, cond), text_kv(model, p, uncond),
                                              num_steps=num_steps, shift=shift, guidance=guidance, keep=keep))(
      params, noise)
  # The schedule by hand: sigma_i = shift s / (1 + (shift - 1) s) at s = 1 - i / N, then 0.
  s = 1 - np.arange(num_steps) / num_steps
  sigmas = np.append(shift * s / (1 + (shift - 1) * s), 0.0)
  x, trajectory = np.asarray(noise, np.float64), []
  for i in range(num_steps):
    trajectory.append(x)
    t = np.full(2, 1000 * sigmas[i])
    v_c, v_u = velocity(model, params, x, t, cond), velocity(model, params, x, t, uncond)
    x0_c, x0_u = x - sigmas[i] * v_c, x - sigmas[i] * v_u
    x0 = x0_u + guidance * (x0_c - x0_u)
    x = x + (sigmas[i + 1] - sigmas[i]) * (x - x0) / sigmas[i]
  trajectory.append(x)
  want = np.stack([trajectory[k] for k in keep], axis=1)
  assert got.shape == (2, len(keep), *LATENT) and got.dtype == jnp.float32
  assert np.abs(want[:, -1] - want[:, 0]).mean() > 0.1   # the model moved the latents
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(kept_timesteps(num_steps, shift, keep), 1000 * sigmas[list(keep)])


@pytest.mark.parametrize("keep", [(), (0, 0, 4), (2, 1), (0, 5)])
def test_keep_must_be_increasing_trajectory_indices(keep):
  with pytest.raises(ValueError, match="strictly increasing indices in \\[0, num_steps=4\\]"):
    kept_timesteps(4, 5.0, keep)
