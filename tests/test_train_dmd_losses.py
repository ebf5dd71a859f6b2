"""DMD's three losses (training/losses/{dmd,critic,regulariser}.py): each equals its definition computed by
hand in float64; on two known Gaussians one DMD step moves the generator's samples toward the teacher's
distribution by the predicted amount; gradients reach only what they should; the regulariser is 0 (and
runs no teacher) unless the exit step is 0."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from hybrid_forcing_jax import flow
from hybrid_forcing_jax.config import tiny_config
from hybrid_forcing_jax.dit import WanDiT, param_shapes
from hybrid_forcing_jax.training.losses.critic import critic_loss
from hybrid_forcing_jax.training.losses.dmd import dmd_generator_loss, dmd_loss
from hybrid_forcing_jax.training.losses.noising import noise_video
from hybrid_forcing_jax.training.losses.regulariser import regulariser_loss
from hybrid_forcing_jax.training.losses.scores import conditional_x0_fn, teacher_rollout_fn, teacher_x0_fn
from hybrid_forcing_jax.training.teacher import euler_trajectory

SHIFT, T_MIN, T_MAX = 5.0, 20.0, 980.0
TIMESTEP_LAW = dict(shift=SHIFT, t_min=T_MIN, t_max=T_MAX)
SHAPE = (2, 3, 2, 2, 4)  # B, F, h, w, C


def _frames(t, xp):
  """Per-frame timesteps [B, F] as sigma, broadcast over h, w, C."""
  return (t / 1000.0)[..., None, None, None]


def real_x0(x_t, t, xp=jnp):
  """A nonlinear stand-in for the teacher's guided x0."""
  return xp.tanh(x_t) * (1 - _frames(t, xp)) + 0.1


def fake_x0(x_t, t, params=None, xp=jnp):
  """A stand-in for the critic: x0 = a x_t + b sigma, with parameters a (scalar) and b [C]."""
  params = params or {"a": 0.8, "b": xp.asarray([0.3, -0.2, 0.1, 0.5])}
  return params["a"] * x_t + params["b"] * _frames(t, xp)


def _video(seed=0, shape=SHAPE):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _draws(x, rng):
  """The x_t, t, eps the losses draw from rng, as float64 numpy."""
  return [np.asarray(a, np.float64) for a in noise_video(x, rng, **TIMESTEP_LAW)]


def _keep(frame_mask, shape):
  if frame_mask is None:
    return np.ones(shape)
  m = np.asarray(frame_mask, np.float64)
  return np.broadcast_to(m.reshape(m.shape + (1,) * (len(shape) - 2)), shape)


def dmd_by_hand(x, rng, frame_mask):
  """-> (loss, d loss / d x): Self-Forcing's compute_distribution_matching_loss in float64 numpy."""
  x = np.asarray(x, np.float64)
  x_t, t, _ = _draws(x, rng)
  real, fake = real_x0(x_t, t, np), fake_x0(x_t, t, xp=np)
  normaliser = np.abs(x - real).mean(axis=(1, 2, 3, 4), keepdims=True)
  grad = np.nan_to_num((fake - real) / normaliser)
  keep = _keep(frame_mask, x.shape)
  target = x - grad
  return 0.5 * np.sum(keep * (x - target) ** 2) / keep.sum(), keep * grad / keep.sum()


@pytest.mark.parametrize("frame_mask", [None, np.array([0, 1, 1]), np.array([[1, 0, 1], [0, 1, 1]])],
                         ids=["all", "first_frame_masked", "per_sample"])
def test_dmd_loss_equals_definition(frame_mask):
  x, rng = _video(), jax.random.key(1)
  loss_fn = lambda x: dmd_loss(x, real_x0, fake_x0, rng, frame_mask=frame_mask, **TIMESTEP_LAW)
  (loss, metrics), dx = jax.value_and_grad(loss_fn, has_aux=True)(x)
  want_loss, want_dx = dmd_by_hand(x, rng, frame_mask)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(dx, want_dx, rtol=1e-4, atol=1e-7)
  _, t, _ = _draws(x, rng)
  assert np.all((t >= T_MIN) & (t <= T_MAX)) and np.all(t == t[:, :1])  # one t per sample, in the clamp
  np.testing.assert_allclose(metrics["dmd_t"], t.mean(), rtol=1e-6)


def test_a_frame_mask_of_another_shape_is_named():
  with pytest.raises(ValueError, match=r"frame_mask must be \[F\] or \[B, F\] = \[2, 3\].*got \[4\]"):
    dmd_loss(_video(), real_x0, fake_x0, jax.random.key(1), frame_mask=np.ones(4), **TIMESTEP_LAW)


def test_dmd_loss_accumulates_in_float64_under_x64():
  x, rng = _video(), jax.random.key(1)
  with jax.enable_x64(True):
    loss, _ = dmd_loss(x, real_x0, fake_x0, rng, **TIMESTEP_LAW)
    assert loss.dtype == jnp.float64
  np.testing.assert_allclose(loss, dmd_by_hand(x, rng, None)[0], rtol=1e-6)


def critic_by_hand(video, rng, params):
  video = np.asarray(video, np.float64)
  x_t, t, eps = _draws(video, rng)
  x0 = fake_x0(x_t, t, {k: np.asarray(v, np.float64) for k, v in params.items()}, np)
  flow_pred = (x_t - x0) / _frames(t, np)
  return np.mean((flow_pred - (eps - video)) ** 2)


def test_critic_loss_equals_definition_and_trains_only_the_critic():
  video, rng = _video(2), jax.random.key(3)
  params = {"a": jnp.float32(0.8), "b": jnp.asarray([0.3, -0.2, 0.1, 0.5], jnp.float32)}
  loss_fn = lambda params, video: critic_loss(video, lambda x_t, t: fake_x0(x_t, t, params), rng, **TIMESTEP_LAW)[0]
  loss = loss_fn(params, video)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, critic_by_hand(video, rng, params), rtol=1e-5)
  d_params, d_video = jax.grad(loss_fn, argnums=(0, 1))(params, video)
  assert not np.any(np.asarray(d_video))  # the generated video is detached
  # The critic's gradient equals a central finite difference of the by-hand float64 loss.
  h = 1e-4
  for name, index in (("a", ()), ("b", (2,))):
    up, down = ({k: np.array(v, np.float64) for k, v in params.items()} for _ in range(2))
    up[name][index] += h
    down[name][index] -= h
    fd = (critic_by_hand(video, rng, up) - critic_by_hand(video, rng, down)) / (2 * h)
    np.testing.assert_allclose(np.asarray(d_params[name])[index], fd, rtol=1e-4)


def test_dmd_gradients_reach_only_the_generator_output():
  """The teacher and the critic here are plain functions of their parameters, with no stop_gradient of
  their own: dmd_loss alone must keep the gradient off them."""
  x, rng = _video(4), jax.random.key(5)
  teacher = {"scale": jnp.float32(1.3)}
  critic = {"a": jnp.float32(0.8), "b": jnp.asarray([0.3, -0.2, 0.1, 0.5], jnp.float32)}

  def loss_fn(x, teacher, critic):
    real = lambda x_t, t: teacher["scale"] * real_x0(x_t, t)
    fake = lambda x_t, t: fake_x0(x_t, t, critic)
    return dmd_loss(x, real, fake, rng, **TIMESTEP_LAW)[0]

  dx, d_teacher, d_critic = jax.grad(loss_fn, argnums=(0, 1, 2))(x, teacher, critic)
  assert np.all(np.abs(np.asarray(dx)) > 0)
  for leaf in jax.tree_util.tree_leaves((d_teacher, d_critic)):
    assert not np.any(np.asarray(leaf))


TINY = tiny_config()


def _random_params(seed):
  """Every parameter random, drawn by numpy (not Wan's initialisers, whose zero head would make v = 0;
  and no model.init to compile)."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda p: jnp.asarray(0.3 * rng.standard_normal(p.shape), p.dtype),
                                param_shapes(TINY, jnp.float32))


@functools.cache
def _tiny_dit(seed):
  """A tiny float32 DiT and its parameters."""
  return WanDiT(TINY, dtype=jnp.float32, param_dtype=jnp.float32), _random_params(seed)


def test_dmd_with_dit_scores_reaches_neither_teacher_nor_critic():
  """The trainer's wrapper on tiny DiTs: a gradient for the video, exactly none for either network;
  and the teacher's x0 at guidance 1 is its conditional x0 (the two score adapters agree)."""
  (model, teacher), (_, critic) = _tiny_dit(0), _tiny_dit(1)
  config, params = model.config, {"teacher": teacher, "critic": critic}
  keys = jax.random.split(jax.random.key(2), 3)
  x = jax.random.normal(keys[0], (1, 3, 4, 4, config.in_dim))
  batch = {"context": jax.random.normal(keys[1], (1, 5, config.text_dim)),
           "negative_context": jax.random.normal(keys[2], (1, 5, config.text_dim))}
  models = {"teacher": model, "critic": model}
  loss_fn = lambda x, params: dmd_generator_loss(x, models, params, batch, jax.random.key(3), guidance=4.0,
                                                 **TIMESTEP_LAW)[0]
  loss, (dx, d_params) = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))(x, params)
  assert np.isfinite(loss) and np.any(np.asarray(dx))
  for leaf in jax.tree_util.tree_leaves(d_params):
    assert not np.any(np.asarray(leaf))

  @jax.jit
  def guided_and_conditional(x_t, t):
    guided = teacher_x0_fn(model, teacher, batch["context"], batch["negative_context"], 1.0)
    return guided(x_t, t), conditional_x0_fn(model, teacher, batch["context"])(x_t, t)

  np.testing.assert_allclose(*guided_and_conditional(x, jnp.full(x.shape[:2], 500.0)), rtol=1e-5, atol=1e-5)


def _posterior_gain(sigma, s):
  """k = Cov(x0, x_t) / Var(x_t) for x0 ~ N(mu, s^2) and x_t = (1 - sigma) x0 + sigma eps."""
  return (1 - sigma) * s ** 2 / ((1 - sigma) ** 2 * s ** 2 + sigma ** 2)


def _gaussian_x0(mu, s):
  """The exact x0-predictor of N(mu, s^2) per channel: E[x0 | x_t] = mu + k (x_t - (1 - sigma) mu)."""
  def x0(x_t, t):
    sigma = _frames(t, jnp)
    return mu + _posterior_gain(sigma, s) * (x_t - (1 - sigma) * mu)
  return x0


def _folded_normal_mean(m, var):
  """E|Y| for Y ~ N(m, var)."""
  sd = np.sqrt(var)
  return sd * np.sqrt(2 / np.pi) * np.exp(-m ** 2 / (2 * var)) + m * scipy.special.erf(m / (sd * np.sqrt(2)))


def test_dmd_step_moves_samples_toward_the_teacher_by_the_predicted_amount():
  """Teacher = the exact x0-predictor of the data N(mu_real, s^2); critic = that of the generator's samples
  N(mu_fake, s^2). Then fake - real = a delta with delta = mu_fake - mu_real and a = 1 - k (1 - sigma),
  and x - real = a (x - mu_real) - k sigma eps ~ N(a delta, a^2 s^2 + k^2 sigma^2) per element, so the
  normaliser concentrates on n(sigma), the channels' mean of that folded normal's mean. One step
  x <- x - lr N dloss/dx (N elements) moves channel c of a sample by -lr delta_c a / normaliser: toward
  mu_real, by -lr delta_c E_t[a / n] in expectation over DMD's t."""
  s = 0.5
  mu_real = np.array([1.0, -1.0, 0.5, 0.0])
  mu_fake = np.array([0.0, 0.0, 0.0, 0.0])
  delta = mu_fake - mu_real
  shape = (2048, 2, 8, 8, 4)
  x = jnp.asarray(mu_fake, jnp.float32) + s * _video(6, shape)
  rng, lr = jax.random.key(7), 0.1
  loss_fn = lambda x: dmd_loss(x, _gaussian_x0(jnp.asarray(mu_real, jnp.float32), s),
                               _gaussian_x0(jnp.asarray(mu_fake, jnp.float32), s), rng, **TIMESTEP_LAW)[0]
  dx = jax.jit(jax.grad(loss_fn))(x)
  shift = np.asarray(-lr * x.size * dx, np.float64).mean(axis=(1, 2, 3))  # [B, C], per sample and channel

  def a_over_n(sigma):
    k = _posterior_gain(sigma, s)
    a = 1 - k * (1 - sigma)
    var = a ** 2 * s ** 2 + (k * sigma) ** 2
    return a / np.mean(_folded_normal_mean(a[..., None] * delta, var[..., None]), axis=-1)

  # Given each sample's t, the shift is the closed form to within the normaliser's sampling noise.
  _, t, _ = _draws(x, rng)
  predicted = -lr * a_over_n(t[:, 0] / 1000)[:, None] * delta
  moved = delta != 0
  np.testing.assert_allclose(shift[:, moved].mean(0), predicted[:, moved].mean(0), rtol=3e-3)
  assert np.all(np.abs(shift[:, ~moved]) < 1e-6)  # equal Gaussians: fake == real up to rounding
  # Over DMD's law of t (u uniform, t = clamp(1000 shift(u))), the mean shift is the expectation.
  u = (np.arange(20_000) + 0.5) / 20_000
  sigma = np.clip(1000 * flow.shift_sigma(u, SHIFT), T_MIN, T_MAX) / 1000
  expected = -lr * a_over_n(sigma).mean() * delta
  standard_error = shift.std(0) / np.sqrt(shape[0])
  assert np.all(np.abs(shift.mean(0) - expected) <= 4 * standard_error + 1e-12)
  # Toward the teacher: every moved channel's mean gets closer to mu_real (by lr E[a / n] |delta|, with
  # E[a / n] = 1.27 here).
  before = np.asarray(x, np.float64).mean(axis=(0, 1, 2, 3)) - mu_real
  after = before + shift.mean(0)
  assert np.all(np.abs(after[moved]) < np.abs(before[moved]))


def _regulariser_case(seed):
  keys = jax.random.split(jax.random.key(seed))
  return jax.random.normal(keys[0], SHAPE), jax.random.normal(keys[1], SHAPE)


def test_regulariser_is_the_weighted_mse_at_exit_step_0_and_zero_without_teacher_work_otherwise():
  student, teacher = _regulariser_case(8)
  frame_mask = jnp.asarray([0, 1, 1])
  teacher_runs = []

  def teacher_x0():
    jax.debug.callback(lambda: teacher_runs.append(1))
    return teacher

  loss_fn = jax.jit(jax.value_and_grad(
      lambda student, exit_step: regulariser_loss(student, exit_step, teacher_x0, weight=0.05,
                                                  frame_mask=frame_mask), has_aux=True))
  keep = _keep(frame_mask, SHAPE)
  diff = np.asarray(student, np.float64) - np.asarray(teacher, np.float64)
  for exit_step in (1, 2, 3):
    (loss, metrics), d_student = loss_fn(student, jnp.int32(exit_step))
    jax.effects_barrier()
    assert float(loss) == 0.0 and float(metrics["regulariser_active"]) == 0.0
    assert not np.any(np.asarray(d_student))
  assert teacher_runs == []
  (loss, metrics), d_student = loss_fn(student, jnp.int32(0))
  jax.effects_barrier()
  assert teacher_runs == [1]
  mse = np.sum(keep * diff ** 2) / keep.sum()
  np.testing.assert_allclose(metrics["regulariser_mse"], mse, rtol=1e-6)
  np.testing.assert_allclose(loss, 0.05 * mse, rtol=1e-6)
  np.testing.assert_allclose(d_student, 0.05 * 2 * keep * diff / keep.sum(), rtol=1e-5, atol=1e-9)


def test_regulariser_of_weight_0_never_traces_the_teacher():
  student, _ = _regulariser_case(8)

  def teacher_x0():
    raise AssertionError("the teacher ran at weight 0")

  loss, metrics = jax.jit(lambda s: regulariser_loss(s, 0, teacher_x0, weight=0.0))(student)
  assert float(loss) == 0.0 and float(metrics["regulariser_active"]) == 0.0


def test_regulariser_with_the_teacher_rollout_of_a_dit():
  """The online path: the target is the teacher's Euler rollout from the student's noise."""
  model, params = _tiny_dit(0)
  config = model.config
  keys = jax.random.split(jax.random.key(9), 4)
  noise, student = (jax.random.normal(k, (1, 3, 4, 4, config.in_dim)) for k in keys[:2])
  context, negative = (jax.random.normal(k, (1, 5, config.text_dim)) for k in keys[2:])
  rollout = dict(num_steps=2, shift=SHIFT, guidance=3.0)
  loss_fn = jax.jit(lambda exit_step: regulariser_loss(
      student, exit_step, teacher_rollout_fn(model, params, noise, context, negative, **rollout))[0])
  kv = lambda c: model.apply({"params": params}, c, method=WanDiT.text_kv)
  target = jax.jit(lambda: euler_trajectory(model, params, noise, kv(context), kv(negative), keep=(2,),
                                            **rollout)[:, 0])()
  np.testing.assert_allclose(loss_fn(0), 0.05 * np.mean((np.asarray(student) - np.asarray(target)) ** 2),
                             rtol=1e-5)
  assert float(loss_fn(1)) == 0.0
