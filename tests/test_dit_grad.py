"""Gradients through the DiT: every rematerialisation policy gives the gradients of the plain forward,
in every attention layout (float32, tiny model)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybrid_forcing_jax.dit import ATTENTION_KERNELS, REMAT_POLICIES, AttentionLayout, WanDiT
from hybrid_forcing_jax.streaming.config import StreamConfig
from hybrid_forcing_jax.streaming.sampler import rollout, start, stream_forward
from tests.streaming_fixtures import LATENT_HW, context, random_linear_proj, tiny_model

STREAM = StreamConfig(chunk_frames=1, sink_frames=1, window_frames=3, rope_cap=3, sparse_ratio=None)


def _inputs(model, frames, seed=0):
  k = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(k[0], (2, frames) + LATENT_HW + (model.config.in_dim,))
  t = jax.random.uniform(k[1], (2, frames), maxval=1000.0)
  return x, t, context(model, seed=seed + 1, batch=2)


def _loss_fn(model, layout):
  """A scalar that depends on every output element (a fixed random projection of the velocity)."""
  if layout.returns_kv:
    def loss(params, state, x, t, ctx):
      del ctx
      vel, _ = stream_forward(model, params, STREAM, state, x, t[0, 0])
      return jnp.sum(vel * jnp.cos(jnp.arange(vel.size).reshape(vel.shape)))
  else:
    def loss(params, state, x, t, ctx):
      del state
      vel = model.apply({"params": params}, x, t, ctx, layout=layout)
      return jnp.sum(vel * jnp.cos(jnp.arange(vel.size).reshape(vel.shape)))
  return jax.jit(jax.grad(loss))


def _stream_state(model, params):
  """A stream a few chunks in, so the cache, the ring and the linear memory are all in use."""
  state = start(model, params, STREAM, context(model, seed=3, batch=2), jax.random.key(0), LATENT_HW)
  return jax.jit(lambda p, s: rollout(model, p, STREAM, s, 3)[0])(params, state)


@pytest.mark.parametrize("layout", [AttentionLayout(), AttentionLayout.block_causal(1),
                                    AttentionLayout("stream", STREAM.chunk_frames, STREAM)], ids=lambda l: l.kind)
def test_remat_gradients_equal_plain(layout):
  model, params = tiny_model(seed=1, linear_proj=True)
  params = random_linear_proj(params, seed=2)
  frames = STREAM.chunk_frames if layout.returns_kv else 3
  x, t, ctx = _inputs(model, frames)
  state = _stream_state(model, params) if layout.returns_kv else None
  want = _loss_fn(model, layout)(params, state, x, t, ctx)
  assert float(jnp.abs(want["blocks"]["self_attn"]["q"]["weight"]).max()) > 0
  if layout.returns_kv:
    assert float(jnp.abs(want["blocks"]["self_attn"]["linear_proj"]["weight"]).max()) > 0
  for policy in sorted(set(REMAT_POLICIES) - {"none"}):
    remat_model = WanDiT(model.config, dtype=model.dtype, param_dtype=model.param_dtype,
                         attention_backend=model.attention_backend, remat=policy)
    got = _loss_fn(remat_model, layout)(params, state, x, t, ctx)
    jax.tree_util.tree_map_with_path(
        lambda path, g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6,
                                                      err_msg=f"{policy}: {jax.tree_util.keystr(path)}"),
        got, want)


def test_unknown_remat_policy_is_named():
  model, params = tiny_model()
  x, t, ctx = _inputs(model, 1)
  bad = WanDiT(model.config, dtype=jnp.float32, param_dtype=jnp.float32, attention_backend="xla", remat="yes")
  with pytest.raises(ValueError, match="remat must be one of .* got 'yes'"):
    bad.apply({"params": params}, x, t, ctx)


def test_attention_saveable_keeps_the_attention_kernels_forward():
  """remat 'attention_saveable' on the stream's block-sparse Pallas kernel (Triton, interpret mode on the CPU):
  the gradients of the plain forward, and the backward reruns no forward kernel (full remat reruns one per
  layer's recomputed block)."""
  base, params = tiny_model(seed=1)
  config = dataclasses.replace(base.config, num_heads=3)   # head_dim 16: the Triton kernel's power of 2
  stream = dataclasses.replace(STREAM, sparse_ratio=0.5, sparse_backend="pallas_triton")
  model = WanDiT(config, dtype=base.dtype, param_dtype=base.param_dtype, attention_backend=base.attention_backend)
  state = start(model, params, stream, context(model, seed=3, batch=2), jax.random.key(0), LATENT_HW)
  state = jax.jit(lambda p, s: rollout(model, p, stream, s, 3)[0])(params, state)
  x = jax.random.normal(jax.random.key(5), (2, 1) + LATENT_HW + (config.in_dim,))

  def grad_of(policy):
    remat_model = WanDiT(config, dtype=base.dtype, param_dtype=base.param_dtype,
                         attention_backend=base.attention_backend, remat=policy)

    def loss(p):
      vel, _ = stream_forward(remat_model, p, stream, state, x, 500.0)
      return jnp.sum(vel * jnp.cos(jnp.arange(vel.size).reshape(vel.shape)))
    kernels = str(jax.make_jaxpr(jax.grad(loss))(params)).count("pallas_call[")
    return jax.jit(jax.grad(loss))(params), kernels

  (want, plain), (full, recomputed), (got, kept) = (grad_of(p) for p in ("none", "full", "attention_saveable"))
  assert kept == plain < recomputed, (plain, recomputed, kept)
  for g in (full, got):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g, want)


def test_attention_kernel_names_are_jax_primitives():
  """attention_saveable picks primitives by name: each one it names exists in this JAX (a rename would turn
  the policy into full remat without a word)."""
  from jax._src import core
  from jax._src.cudnn import fused_attention_stablehlo
  from jax._src.pallas import pallas_call
  known = {v.name for module in (fused_attention_stablehlo, pallas_call) for v in vars(module).values()
           if isinstance(v, core.Primitive)}
  assert ATTENTION_KERNELS <= known, sorted(ATTENTION_KERNELS - known)
