"""The training rollout (streaming/sampler.py's exit-step hooks) through a 3-chunk hybrid stream of a tiny
model, block-sparse (XLA reference) and dense, in float32:
  * its gradient equals a finite difference (directional derivative along a random direction of a few
    parameters, linear_proj included) taken with the cache held at the unperturbed chunks (the cache
    carries no gradient by design, so a difference through it would measure something else);
  * only the exit forwards carry gradient: with separate parameter copies for the prefix steps and the
    cache writes, their gradient is exactly zero;
  * values and gradient equal the rollout written out by hand from `stream_forward` and `commit_chunk`,
    with the cache built entirely under stop_gradient and every prefix step re-noised with fresh noise.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybrid_forcing_jax import flow
from hybrid_forcing_jax.streaming.config import StreamConfig
from hybrid_forcing_jax.streaming.sampler import (chunk_noise, context_noise_of, rollout, start,
                                                  stream_forward)
from hybrid_forcing_jax.streaming.state import commit_chunk
from tests.streaming_fixtures import context, random_linear_proj, tiny_model

HW = (16, 16)   # 64 tokens per frame: whole 64-token key blocks for the block-sparse selection
EXITS = (2, 0, 3)   # per chunk; 0 = no prefix step, 3 = the last step (inference's chunk)
# Sink 1, no ring: chunk 2 reads the sink, the linear memory of frame 1 and itself.
BASE = dict(chunk_frames=1, sink_frames=1, window_frames=2, rope_cap=2, sparse_backend="xla")


def _setup(sparse_ratio):
  model, params = tiny_model(seed=11, linear_proj=True)
  params = random_linear_proj(params, seed=12)
  cfg = StreamConfig(sparse_ratio=sparse_ratio, **BASE)
  state = start(model, params, cfg, context(model, seed=13, batch=2), jax.random.key(14), HW)
  weights = jax.random.normal(jax.random.key(15), (len(EXITS), 2, 1) + HW + (model.config.in_dim,))
  return model, params, cfg, state, weights


def reference_chunks(model, params, grad_params, cfg, state, context_noise, cached=None):
  """The training rollout written out chunk by chunk, with no use of the sampler's hooks. `cached`
  (optional, [N, B, F, h, w, C]): the chunks to write into the cache instead of the ones produced, so a
  finite difference can hold the cache (which carries no gradient by design) fixed."""
  sg = jax.lax.stop_gradient
  ts, sig = cfg.timesteps(), cfg.sigmas()
  chunks = []
  for c, e in enumerate(EXITS):
    noise = chunk_noise(state.key, c, len(ts), (2, 1) + HW + (model.config.in_dim,))
    x = noise[0]
    for i in range(e):
      x0 = flow.x0_from_velocity(x, stream_forward(model, sg(params), cfg, state, x, ts[i])[0], sig[i])
      x = flow.add_noise(x0, noise[i + 1], sig[i + 1])
    x = sg(x)
    chunk = flow.x0_from_velocity(x, stream_forward(model, grad_params, cfg, state, x, ts[e])[0], sig[e])
    chunks.append(chunk)
    clean = sg(chunk if cached is None else cached[c])
    written = clean
    if context_noise:
      written = flow.add_noise(clean, context_noise_of(state.key, c, clean.shape), context_noise / 1000)
    _, (k, v) = stream_forward(model, sg(params), cfg, state, written, context_noise)
    state = sg(commit_chunk(cfg, state, k, v, clean))
  return jnp.stack(chunks)


def _direction(params, seed):
  """A random direction on the last layer's self-attention v, o and linear_proj, its FFN and the head;
  zero elsewhere. These leave every ReLU of the linear read-out (phi(q)) and the block selection (from
  q and k) where they are, so the loss is smooth along it and a finite difference converges."""
  chosen = ("self_attn.v.weight", "self_attn.o.weight", "self_attn.linear_proj.weight",
            "ffn.0.weight", "head.head.weight")
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  out = []
  for (path, leaf), k in zip(leaves, keys):
    name = ".".join(str(getattr(p, "key", p)) for p in path)
    d = jnp.zeros_like(leaf)
    if name in ("head.head.weight",):
      d = jax.random.normal(k, leaf.shape)
    elif any(name == "blocks." + c for c in chosen):
      d = d.at[-1].set(jax.random.normal(k, leaf.shape[1:]))
    out.append(d)
  return jax.tree_util.tree_unflatten(treedef, out)


@pytest.mark.parametrize("sparse_ratio,context_noise", [(0.5, 0.0), (None, 100.0)], ids=["sparse", "dense"])
def test_rollout_gradient(sparse_ratio, context_noise):
  model, params, cfg, state, weights = _setup(sparse_ratio)

  def loss(prefix_params, grad_params, exits, state):
    _, chunks = rollout(model, prefix_params, cfg, state, len(EXITS), exit_step=exits, grad_params=grad_params,
                        context_noise=context_noise)
    return jnp.sum(chunks * weights), chunks

  exits = jnp.asarray(EXITS, jnp.int32)
  (value, chunks), (g_prefix, g_exit) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
      params, params, exits, state)

  # Nothing but the exit forwards is differentiated.
  for path, g in jax.tree_util.tree_flatten_with_path(g_prefix)[0]:
    assert not np.any(np.asarray(g)), f"gradient through a prefix step or cache write: {jax.tree_util.keystr(path)}"
  lp = g_exit["blocks"]["self_attn"]["linear_proj"]["weight"]
  assert float(jnp.abs(lp).max()) > 1e-4, "the linear memory's read-out gets no gradient"

  # The same rollout written out by hand, cache under stop_gradient: same values, same gradient.
  ref_loss = lambda gp: jnp.sum(reference_chunks(model, params, gp, cfg, state, context_noise) * weights)
  ref_value, ref_grad = jax.jit(jax.value_and_grad(ref_loss))(params)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  jax.tree_util.tree_map_with_path(
      lambda path, g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path)),
      g_exit, ref_grad)

  # Directional derivative against a central finite difference of the exit parameters.
  d = _direction(params, seed=16)
  analytic = sum(float(jnp.vdot(g, v)) for g, v in zip(jax.tree_util.tree_leaves(g_exit), jax.tree_util.tree_leaves(d)))
  # The cache is held at the unperturbed rollout's chunks: the gradient ignores it by design.
  value_at = jax.jit(lambda gp: jnp.sum(reference_chunks(model, params, gp, cfg, state, context_noise, chunks) * weights))
  h = 1e-3
  shifted = lambda sign: jax.tree_util.tree_map(lambda p, v: p + sign * h * v, params, d)
  numeric = (float(value_at(shifted(1))) - float(value_at(shifted(-1)))) / (2 * h)
  assert abs(analytic) > 1.0
  np.testing.assert_allclose(analytic, numeric, rtol=2e-3)


def test_last_exit_step_is_inference():
  """exit_step = last with the same parameters everywhere is the inference rollout, value for value."""
  model, params, cfg, state, _ = _setup(None)
  _, want = jax.jit(lambda p, s: rollout(model, p, cfg, s, 2))(params, state)
  _, got = jax.jit(lambda p, s: rollout(model, p, cfg, s, 2, exit_step=len(cfg.denoising_steps) - 1))(params, state)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
