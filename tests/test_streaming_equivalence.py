"""Streaming with a window covering the whole video, no linear memory and absolute RoPE equals the
block-causal forward (same inputs, same noise), chunk by chunk and step by step of the sampler."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybrid_forcing_jax import flow
from hybrid_forcing_jax.dit import AttentionLayout
from hybrid_forcing_jax.streaming.config import StreamConfig
from hybrid_forcing_jax.streaming.sampler import chunk_noise, rollout, start
from tests.streaming_fixtures import LATENT_HW, context, tiny_model


def block_causal_sampler(model, params, cfg, ctx, key, num_chunks, batch):
  """The sampler written directly on the block-causal training forward over the growing prefix."""
  f = cfg.chunk_frames
  fwd = jax.jit(lambda x, t: model.apply({"params": params}, x, t, ctx, layout=AttentionLayout.block_causal(f)))
  shape = (batch, f) + LATENT_HW + (model.config.in_dim,)
  sig = cfg.sigmas()
  clean = []
  for c in range(num_chunks):
    noise = chunk_noise(key, c, len(sig), shape)
    x = noise[0]
    for i, (t, s) in enumerate(zip(cfg.timesteps(), sig)):
      prefix = jnp.concatenate(clean + [x], axis=1)
      times = jnp.concatenate([jnp.zeros((batch, c * f)), jnp.full((batch, f), t)], axis=1)
      x0 = flow.x0_from_velocity(x, fwd(prefix, times)[:, -f:], s)
      x = x0 if i == len(sig) - 1 else flow.add_noise(x0, noise[i + 1], sig[i + 1])
    clean.append(x)
  return jnp.stack(clean)


@pytest.mark.parametrize("chunk,sink,chunks", [(3, 0, 3), (1, 0, 4), (3, 3, 3)])
def test_stream_equals_block_causal(chunk, sink, chunks):
  model, params = tiny_model(seed=chunk + sink)
  cfg = StreamConfig(chunk_frames=chunk, sink_frames=sink, window_frames=chunk * chunks, rope="absolute",
                     linear=False, sparse_ratio=None)
  batch = 2
  ctx = context(model, seed=1, batch=batch)
  key = jax.random.key(7)
  state = start(model, params, cfg, ctx, key, LATENT_HW)
  _, got = jax.jit(lambda p, s: rollout(model, p, cfg, s, chunks))(params, state)
  want = block_causal_sampler(model, params, cfg, ctx, key, chunks, batch)
  assert got.shape == want.shape == (chunks, batch, chunk) + LATENT_HW + (model.config.in_dim,)
  for c in range(chunks):
    np.testing.assert_allclose(got[c], want[c], rtol=1e-4, atol=1e-4, err_msg=f"chunk {c}")


def test_schedule_is_self_forcing_warped():
  np.testing.assert_allclose(StreamConfig().timesteps(), [1000.0, 937.5, 833.3333333, 625.0], rtol=1e-7)
  np.testing.assert_allclose(StreamConfig().sigmas(), [1.0, 0.9375, 0.8333333333, 0.625], rtol=1e-7)
