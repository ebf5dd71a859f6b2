"""The ODE-init regression loss: its formula, its per-chunk timesteps, the timestep alignment of the ODE
pairs, and that the tiny student overfits a few fixed trajectories through the real train step."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from hybrid_forcing_jax import dit, flow
from hybrid_forcing_jax.config import tiny_config
from hybrid_forcing_jax.streaming.config import StreamConfig
from hybrid_forcing_jax.training import optim, steps
from hybrid_forcing_jax.training.losses.ode import chunk_inputs, ode_regression_loss
from hybrid_forcing_jax.training.state import TrainState

CONFIG = tiny_config()
TIMESTEPS = tuple(StreamConfig().timesteps())   # the warped 4-step schedule at shift 5
CHUNK = 3


def trajectories(batch: int, frames: int = 6, hw: int = 4, seed: int = 0):
  """Fixed straight-line "teacher" trajectories: entry i noised to TIMESTEPS[i], the last entry clean;
  and a text context per example. float32 numpy."""
  rng = np.random.default_rng(seed)
  x0 = rng.standard_normal((batch, frames, hw, hw, CONFIG.in_dim)).astype(np.float32)
  eps = rng.standard_normal(x0.shape).astype(np.float32)
  points = [np.asarray(flow.add_noise(x0, eps, t / flow.NUM_TRAIN_TIMESTEPS)) for t in TIMESTEPS]
  latents = np.stack(points + [x0], axis=1)
  context = rng.standard_normal((batch, 5, CONFIG.text_dim)).astype(np.float32)
  return {"latents": latents, "context": context}


def ode_problem(batch: int, dtype=jnp.bfloat16, remat: str = "none", lr: float = 3e-3):
  """The tiny student, its float32 masters, a train state, the loss and the optimiser."""
  model = dit.WanDiT(CONFIG, dtype=dtype, param_dtype=dtype, attention_backend="xla", remat=remat)
  loss_fn = functools.partial(ode_regression_loss, model=model, chunk_frames=CHUNK, denoising_timesteps=TIMESTEPS)
  params = dit.init_params(CONFIG, jax.random.key(0), param_dtype=jnp.float32)
  tx = optim.make_optimizer(ml_collections.ConfigDict(dict(
      lr=lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, clip_norm=10.0, warmup_steps=0, grad_accum=1)))
  state = TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params), ema=optim.init_ema(params),
                     rng=jax.random.key(1))
  return loss_fn, tx, state, dit.param_shapes(CONFIG, dtype)


def test_loss_overfits_four_fixed_pairs():
  loss_fn, tx, state, storage = ode_problem(batch=4)
  batch = jax.tree.map(jnp.asarray, trajectories(4))
  step = jax.jit(steps.make_train_step(loss_fn, tx, ema_decay=0.99, ema_start=0, compute_dtype=storage))
  losses = []
  for _ in range(100):
    state, metrics = step(state, batch, state.rng)
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses))
  assert losses[0] / np.mean(losses[-5:]) > 10, losses[::10]


class VelocityOracle:
  """Stands in for the DiT: returns `scale` times the exact velocity (x_t - x0) / sigma."""

  def __init__(self, clean, scale):
    self.clean, self.scale = clean, scale

  def apply(self, variables, x_t, t, context, *, text_kv, layout):
    assert layout == dit.AttentionLayout.block_causal(CHUNK) and context is not None and text_kv is None
    return self.scale * flow.velocity_from_x0(x_t, self.clean, t / flow.NUM_TRAIN_TIMESTEPS)


def test_loss_is_the_x0_error_of_the_predicted_velocity():
  batch = trajectories(2)
  rng = jax.random.key(3)
  x_t, t, _ = chunk_inputs(batch["latents"], rng, chunk_frames=CHUNK, denoising_timesteps=TIMESTEPS)
  clean = batch["latents"][:, -1]
  for scale in (1.0, 0.0, 0.5):
    loss, _ = ode_regression_loss(None, batch, rng, model=VelocityOracle(clean, scale), chunk_frames=CHUNK,
                                  denoising_timesteps=TIMESTEPS)
    # x0 = x_t - sigma * scale * v_true = clean + (1 - scale) (x_t - clean)
    expected = np.mean(np.square((1 - scale) * (np.asarray(x_t) - clean)))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-7)


def test_one_trajectory_index_per_chunk():
  b, frames = 16, 21
  # Trajectory point i of every frame holds the value i, so the input reveals the index it came from.
  latents = np.broadcast_to(np.arange(len(TIMESTEPS) + 1, dtype=np.float32)[None, :, None, None, None, None],
                            (b, len(TIMESTEPS) + 1, frames, 2, 2, 1))
  x_t, t, index = chunk_inputs(latents, jax.random.key(0), chunk_frames=CHUNK, denoising_timesteps=TIMESTEPS)
  index = np.asarray(index)
  np.testing.assert_array_equal(np.asarray(x_t)[..., 0, 0, 0], index)
  np.testing.assert_allclose(np.asarray(t), np.asarray(TIMESTEPS, np.float32)[index])
  chunks = index.reshape(b, frames // CHUNK, CHUNK)
  assert (chunks == chunks[..., :1]).all()                       # shared within a chunk
  assert set(np.unique(index)) == set(range(len(TIMESTEPS)))     # never the clean point, every noisy one
  assert len({tuple(row) for row in chunks[..., 0]}) == b        # each example draws its own
  assert not (chunks[..., 0] == chunks[:, :1, 0]).all()          # chunks of one example differ


def test_ode_pairs_line_up_with_the_student_timesteps():
  """Points 0/12/24/36 of 48 Euler steps at shift 5 sit exactly at the warped 4-step schedule the student
  uses (training_spec.md 1, "Timestep alignment"); the peers' shift 8 does not."""
  kept = flow.euler_sigmas(48, 5.0)[[0, 12, 24, 36]] * flow.NUM_TRAIN_TIMESTEPS
  np.testing.assert_allclose(kept, TIMESTEPS, rtol=1e-12)
  np.testing.assert_allclose(TIMESTEPS, [1000.0, 937.5, 833.3333, 625.0], rtol=1e-6)
  assert not np.allclose(flow.euler_sigmas(48, 8.0)[[0, 12, 24, 36]] * flow.NUM_TRAIN_TIMESTEPS, TIMESTEPS, atol=1)


def test_a_trajectory_of_the_wrong_length_is_named():
  batch = trajectories(1)
  batch["latents"] = batch["latents"][:, 1:]
  with pytest.raises(ValueError, match=r"batch\['latents'\] holds K=4 trajectory points"):
    ode_regression_loss(None, batch, jax.random.key(0), model=None, chunk_frames=CHUNK, denoising_timesteps=TIMESTEPS)
