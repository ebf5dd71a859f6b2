"""The generator's self-forcing rollout (training/rollout.py) on a tiny model, chunks of one latent frame:
  * the plan (length, exit step) is uniform over its ranges and a function of the key alone;
  * a long rollout's loss window is the tail of the same rollout taken whole, its first frame re-encoded
    through the VAE from the decoded frames before it and its first chunk masked; the window's noise does
    not depend on the rollout's length;
  * gradients reach only the window's exit forwards (a separate parameter copy for everything else gets
    exactly zero, through pre-exit steps, cache writes, the chunks before the window and the VAE), and
    there they equal a finite difference;
  * the phase switch: the phase-2 model (zero linear_proj, block-sparse at density 1.0, relative RoPE,
    a sink) rolls out exactly what the phase-1 model (dense, absolute RoPE, no sink) rolls out.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybrid_forcing_jax.config import tiny_config
from hybrid_forcing_jax.dit import WanDiT, init_params
from hybrid_forcing_jax.streaming.config import StreamConfig
from hybrid_forcing_jax.training.guidance import text_kv
from hybrid_forcing_jax.training.rollout import draw_rollout_plan, self_forcing_rollout, window_noise
from hybrid_forcing_jax.vae import WanVAE, init_params as vae_init_params, tiny_vae_config
from tests.streaming_fixtures import LATENT_HW, context, random_linear_proj, tiny_model

BATCH = 2
# Phase 2 in small: sink 1 + window 3 frames, linear memory, relative RoPE, block-sparse (XLA reference).
HYBRID = StreamConfig(chunk_frames=1, sink_frames=1, window_frames=3, rope="relative", rope_cap=3, linear=True,
                      sparse_ratio=0.5, sparse_backend="xla")


def _vae(z_dim):
  """A two-level VAE (2x in time and space): Wan's structure, cheap to compile."""
  config = tiny_vae_config(z_dim=z_dim, latents_mean=(0.0,) * z_dim, latents_std=(1.0,) * z_dim, dim_mult=(1, 2),
                           temporal_downsample=(True,), num_res_blocks=1)
  return WanVAE(config, dtype=jnp.float32, conv_impl="3d", upsample_impl="repeat"), vae_init_params(
      config, seed=5, param_dtype=jnp.float32)


def _rollout(model, params, cfg, keys, *, ctx, num_chunks, exit_step, loss_frames, vae=None, grad_params=None):
  return self_forcing_rollout(model, params, cfg, text_kv(model, params, ctx), keys, num_chunks=num_chunks,
                              exit_step=exit_step, latent_hw=LATENT_HW, loss_frames=loss_frames, vae=vae,
                              grad_params=grad_params)


def test_plan_is_uniform_and_shared_by_key():
  draws = np.array([jax.device_get(draw_rollout_plan(jax.random.key(i), min_chunks=7, max_chunks=18, num_steps=4))
                    for i in range(400)])
  assert set(draws[:, 0]) == set(range(7, 19)) and set(draws[:, 1]) == set(range(4))
  again = jax.device_get(draw_rollout_plan(jax.random.key(3), min_chunks=7, max_chunks=18, num_steps=4))
  assert tuple(again) == tuple(draws[3])
  with pytest.raises(ValueError, match="min_chunks <= max_chunks"):
    draw_rollout_plan(jax.random.key(0), min_chunks=8, max_chunks=7, num_steps=4)


@pytest.fixture(scope="module")
def long_rollout():
  """A phase-2 rollout with a 2-frame loss window at exit step 2, and its gradient with respect to two
  copies of the parameters: `params` runs everything but the window's exit forwards (pre-exit steps,
  cache writes, the chunks before the window, the prompts' K/V), `grad_params`, equal in value, runs
  those. One compiled function (the length is traced) serves every test below."""
  model, params = tiny_model(seed=1, linear_proj=True)
  params = random_linear_proj(params, seed=2)
  vae, vae_params = _vae(model.config.in_dim)
  ctx, keys = context(model, seed=3, batch=BATCH), jax.random.split(jax.random.key(4), BATCH)

  def loss(frozen, live, num_chunks, weights):
    r = _rollout(model, frozen, HYBRID, keys, ctx=ctx, num_chunks=num_chunks, exit_step=2, loss_frames=2,
                 vae=(vae, vae_params), grad_params=live)
    return jnp.sum(weights * r.video * r.frame_mask[None, :, None, None, None]), r

  run = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
  whole = jax.jit(lambda: _rollout(model, params, HYBRID, keys, ctx=ctx, num_chunks=4, exit_step=2, loss_frames=4))
  weights = jax.random.normal(jax.random.key(5), (BATCH, 2) + LATENT_HW + (model.config.in_dim,))
  return dict(model=model, params=params, vae=vae, vae_params=vae_params, keys=keys, run=run, whole=whole(),
              weights=weights)


def test_long_rollout_window_is_the_tail_with_the_first_frame_reencoded(long_rollout):
  t = long_rollout
  whole = t["whole"]   # the window is the whole 4-chunk rollout: nothing re-encoded or masked
  (_, long), _ = t["run"](t["params"], t["params"], 4, t["weights"])    # 2 chunks, then the 2-frame window
  (_, short), _ = t["run"](t["params"], t["params"], 2, t["weights"])   # no chunk before the window
  np.testing.assert_array_equal(whole.frame_mask, np.ones(4))
  np.testing.assert_array_equal(long.frame_mask, [0.0, 1.0])
  np.testing.assert_array_equal(short.frame_mask, [1.0, 1.0])
  np.testing.assert_allclose(long.video[:, 1:], whole.video[:, 3:], rtol=1e-5, atol=1e-5)
  vae, vae_params = t["vae"], t["vae_params"]
  pixels = vae.decode(vae_params, whole.video[:, :3])   # the frames before the window and its first one
  np.testing.assert_allclose(long.video[:, :1], vae.encode(vae_params, pixels[:, -1:]), rtol=1e-4, atol=1e-4)
  assert float(jnp.max(jnp.abs(long.video[:, :1] - whole.video[:, 2:3]))) > 1e-2   # really replaced
  # The window's noise is the same for every rollout length, and what window_noise gives the teacher.
  np.testing.assert_array_equal(long.noise, short.noise)
  np.testing.assert_array_equal(long.noise, whole.noise[:, 2:])
  np.testing.assert_array_equal(long.noise, window_noise(t["keys"], HYBRID, loss_frames=2, latent_hw=LATENT_HW,
                                                         channels=t["model"].config.in_dim))
  assert (int(long.num_chunks), int(long.exit_step), int(short.num_chunks)) == (4, 2, 2)


def test_gradient_reaches_only_the_window_exit_forwards(long_rollout):
  """The zero gradient of `params` shows that nothing is differentiated but the window's exit forwards.
  The chunks before the window run in a while loop (traced length), which JAX cannot reverse-
  differentiate: that the gradient compiles at all shows no path runs through them."""
  t = long_rollout
  _, (g_frozen, g_live) = t["run"](t["params"], t["params"], 4, t["weights"])
  assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(g_frozen))
  assert float(jnp.max(jnp.abs(g_live["head"]["head"]["weight"]))) > 0
  assert float(jnp.max(jnp.abs(g_live["blocks"]["self_attn"]["linear_proj"]["weight"]))) > 0


def test_exit_forward_gradient_equals_finite_difference(long_rollout):
  """The window's first chunk (no chunk before it) reads an empty cache and its pre-exit steps run on
  `params`, so it depends on `grad_params` through its exit forward alone: there the truncated gradient
  is the whole derivative."""
  t = long_rollout
  params, weights = t["params"], t["weights"].at[:, 1:].set(0.0)
  _, (_, grad) = t["run"](params, params, 2, weights)
  leaves = jax.tree.leaves(params)
  keys = jax.random.split(jax.random.key(6), len(leaves))
  direction = jax.tree.unflatten(jax.tree.structure(params),
                                 [jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  eps = 1e-3
  shifted = lambda s: t["run"](params, jax.tree.map(lambda p, d: p + s * d, params, direction), 2, weights)[0][0]
  fd = (shifted(eps) - shifted(-eps)) / (2 * eps)
  ad = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(direction)))
  np.testing.assert_allclose(ad, fd, rtol=2e-2)


def test_phase_switch_starts_from_the_phase_1_model():
  """Phase 1 (Self-Forcing: dense, absolute RoPE, no sink, no linear memory) against phase 2 (sink,
  relative RoPE, linear memory, block-sparse) with the phase-1 weights and linear_proj at zero, sparse
  density 1.0. While the window holds the whole history and the video is shorter than the RoPE cap, the
  two see the same keys at the same positions, so they must roll out the same video: the phase-2
  architecture adds nothing until trained. Past the window (second part) the linear memory is non-empty,
  and the zero linear_proj still contributes exactly nothing: the phase-2 model is then the phase-1
  model with phase 2's sink + window softmax, which is the only change the switch makes."""
  phase1_model, phase1 = tiny_model(seed=16)
  config2 = tiny_config(linear_proj=True, num_layers=2)
  phase2_model = WanDiT(config2, dtype=jnp.float32, param_dtype=jnp.float32, attention_backend="xla")
  zero_proj = init_params(config2, jax.random.key(0), param_dtype=jnp.float32)["blocks"]["self_attn"]["linear_proj"]
  assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(zero_proj))
  phase2 = jax.tree.map(lambda x: x, phase1)
  phase2["blocks"]["self_attn"]["linear_proj"] = zero_proj
  ctx, keys = context(phase1_model, seed=17, batch=BATCH), jax.random.split(jax.random.key(18), BATCH)
  frames = 3
  dense = StreamConfig(chunk_frames=1, sink_frames=0, window_frames=frames, rope="absolute", linear=False,
                       sparse_ratio=None)
  hybrid = StreamConfig(chunk_frames=1, sink_frames=1, window_frames=frames, rope="relative", rope_cap=frames,
                        linear=True, sparse_ratio=1.0, sparse_backend="xla")

  def videos(model, params, cfg):
    """The last 3 frames of rollouts of 3 chunks (the window holds the whole history) and of 4 (frame 1
    has left the window for the linear memory)."""
    run = jax.jit(lambda n: _rollout(model, params, cfg, keys, ctx=ctx, num_chunks=n, exit_step=3,
                                     loss_frames=frames).video)
    return run(frames), run(frames + 1)

  phase2_short, phase2_long = videos(phase2_model, phase2, hybrid)
  phase1_short, _ = videos(phase1_model, phase1, dense)
  np.testing.assert_allclose(phase2_short, phase1_short, rtol=1e-5, atol=1e-5)
  # The phase-1 model (no linear_proj at all) with phase 2's sink + window softmax.
  _, windowed_long = videos(phase1_model, phase1, StreamConfig(**{**hybrid.to_dict(), "linear": False}))
  np.testing.assert_array_equal(phase2_long, windowed_long)
