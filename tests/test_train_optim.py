"""The optimiser, EMA and compute cast against hand-written references, through the real train step."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from hybrid_forcing_jax.training import optim, steps
from hybrid_forcing_jax.training.state import TrainState

TARGET = np.array([3.0, -2.0, 0.5, 1.0], np.float32)


def optim_config(**overrides):
  base = dict(lr=0.1, b1=0.8, b2=0.9, eps=1e-3, weight_decay=0.05, clip_norm=1.0, warmup_steps=0, grad_accum=1)
  base.update(overrides)
  return ml_collections.ConfigDict(base)


def quadratic_loss(params, batch, rng):
  """0.5 * scale * |w - target|^2; `scale` per batch makes gradients of chosen sizes."""
  del rng
  return 0.5 * batch["scale"] * jnp.sum(jnp.square(params["w"] - TARGET)), {}


def run(cfg, scales, *, ema_decay=0.5, ema_start=0, w0=None):
  """Train the quadratic through steps.make_train_step; -> (params per step, ema per step, metrics per step)."""
  tx = optim.make_optimizer(cfg)
  params = {"w": jnp.zeros(4, jnp.float32) if w0 is None else jnp.asarray(w0)}
  state = TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params), ema=optim.init_ema(params),
                     rng=jax.random.key(0))
  step = jax.jit(steps.make_train_step(quadratic_loss, tx, ema_decay=ema_decay, ema_start=ema_start,
                                       compute_dtype=jnp.float32))
  ws, emas, metrics = [], [], []
  for s in scales:
    state, m = step(state, {"scale": jnp.float32(s)}, state.rng)
    ws.append(np.asarray(state.params["w"]))
    emas.append(np.asarray(state.ema["w"]))
    metrics.append({k: float(v) for k, v in m.items()})
  return ws, emas, metrics


def reference_adamw(cfg, scales, w0=None):
  """PyTorch's AdamW (decoupled decay), with global-norm clipping and the linear warm-up, in numpy."""
  w = np.zeros(4) if w0 is None else np.asarray(w0, np.float64)
  m, v, out = np.zeros(4), np.zeros(4), []
  for n, s in enumerate(scales):
    g = s * (w - TARGET)
    g = g * min(1.0, cfg.clip_norm / np.linalg.norm(g))
    lr = cfg.lr * (min(1.0, (n + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0)
    m = cfg.b1 * m + (1 - cfg.b1) * g
    v = cfg.b2 * v + (1 - cfg.b2) * g * g
    m_hat, v_hat = m / (1 - cfg.b1 ** (n + 1)), v / (1 - cfg.b2 ** (n + 1))
    w = w - lr * (m_hat / (np.sqrt(v_hat) + cfg.eps) + cfg.weight_decay * w)
    out.append(w)
  return out


def test_adamw_clip_and_warmup_match_the_reference():
  cfg = optim_config(warmup_steps=3)
  scales = [10.0, 0.3, 5.0, 0.1, 2.0]   # gradients above and below the clip norm
  ws, _, metrics = run(cfg, scales)
  np.testing.assert_allclose(ws, reference_adamw(cfg, scales), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose([m["lr"] for m in metrics], [0.1 / 3, 0.2 / 3, 0.1, 0.1, 0.1], rtol=1e-6)
  # grad_norm is the raw gradient's norm (before clipping), at the weights the step started from.
  start = [np.zeros(4)] + ws[:-1]
  np.testing.assert_allclose([m["grad_norm"] for m in metrics],
                             [s * np.linalg.norm(w - TARGET) for s, w in zip(scales, start)], rtol=1e-5)


def test_gradient_accumulation_applies_the_mean_every_k_calls():
  accumulated, emas, _ = run(optim_config(grad_accum=2), [4.0, 2.0, 1.0, 3.0])
  plain, plain_emas, _ = run(optim_config(), [3.0, 2.0])   # the quadratic's gradient is linear in the scale
  np.testing.assert_array_equal(accumulated[0], np.zeros(4))   # nothing applied after the first call
  np.testing.assert_allclose(accumulated[1], plain[0], rtol=1e-6)
  np.testing.assert_allclose(accumulated[3], plain[1], rtol=1e-6)
  # The EMA moves with the applied updates only.
  np.testing.assert_array_equal(emas[0], np.zeros(4))
  np.testing.assert_allclose([emas[1], emas[3]], plain_emas, rtol=1e-6)


def test_ema_copies_the_weights_until_start_then_decays():
  decay, start = 0.5, 2
  ws, emas, _ = run(optim_config(), [1.0] * 5, ema_decay=decay, ema_start=start)
  # Self-Forcing: the EMA is created from the weights before update `start`, then follows every update.
  expected = ws[start - 1]
  for n in range(start, 5):
    expected = decay * expected + (1 - decay) * ws[n]
    np.testing.assert_allclose(emas[n], expected, rtol=1e-6)
  np.testing.assert_array_equal(emas[start - 1], ws[start - 1])


def test_cast_for_compute_keeps_float32_leaves_of_the_dtype_tree():
  masters = {"norm": jnp.full(3, 1.0 + 2 ** -12, jnp.float32), "weight": jnp.full(3, 1.0 + 2 ** -12, jnp.float32),
             "index": jnp.arange(3)}
  storage = {"norm": jax.ShapeDtypeStruct((3,), jnp.float32), "weight": jax.ShapeDtypeStruct((3,), jnp.bfloat16),
             "index": jax.ShapeDtypeStruct((3,), jnp.int32)}
  compute = optim.cast_for_compute(masters, storage)
  assert (compute["norm"].dtype, compute["weight"].dtype, compute["index"].dtype) == (jnp.float32, jnp.bfloat16,
                                                                                     jnp.int32)
  assert float(compute["norm"][0]) != 1.0 and float(compute["weight"][0]) == 1.0
  # Gradients through the cast reach the masters in float32.
  floats = {"norm": masters["norm"], "weight": masters["weight"]}
  grads = jax.grad(lambda m: sum(jnp.sum(x.astype(jnp.float32) ** 2) for x in optim.cast_for_compute(
      m, jnp.bfloat16).values()))(floats)
  assert grads["norm"].dtype == grads["weight"].dtype == jnp.float32


def test_bad_optimiser_config_names_the_key():
  with pytest.raises(ValueError, match="optim.grad_accum"):
    optim.make_optimizer(optim_config(grad_accum=0))
