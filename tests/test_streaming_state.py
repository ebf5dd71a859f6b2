"""The stream state: linear memory vs brute force, fixed size, scan == loop, zero linear_proj, prompt switch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybrid_forcing_jax.streaming.config import StreamConfig
from hybrid_forcing_jax.streaming.sampler import (chunk_step, jitted_step, rollout, start, stream_forward,
                                                  switch_prompt)
from hybrid_forcing_jax.streaming.state import state_bytes
from hybrid_forcing_jax.dit import WanDiT
from tests.streaming_fixtures import LATENT_HW, context, random_linear_proj, tiny_model


@pytest.mark.parametrize("chunk,sink,window,chunks", [
    (3, 3, 9, 6),    # paper layout: sink 3 + ring 3 + chunk 3
    (3, 1, 8, 5),    # ring of 4 frames: not a multiple of the chunk
    (3, 3, 6, 4),    # no ring: frames leave as soon as their chunk is done
    (1, 0, 3, 7),    # no sink
    (1, 2, 4, 6),
])
def test_linear_state_equals_brute_force_over_evicted_frames(chunk, sink, window, chunks):
  model, params = tiny_model(seed=3, linear_proj=True)
  params = random_linear_proj(params, seed=4)
  cfg = StreamConfig(chunk_frames=chunk, sink_frames=sink, window_frames=window, rope="relative", rope_cap=window,
                     sparse_ratio=None)
  state = start(model, params, cfg, context(model, 2), jax.random.key(0), LATENT_HW)
  step = jax.jit(lambda p, s: chunk_step(model, p, cfg, s))
  fresh = jax.jit(lambda p, s, x: stream_forward(model, p, cfg, s, x, 0.0)[1])
  frame_kv = []   # per frame: (k, v) [L, B, T, H, D] as written at t = 0
  for _ in range(chunks):
    before = state
    state, clean = step(params, state)
    k, v = fresh(params, before, clean)
    t = k.shape[2] // chunk
    frame_kv += [(k[:, :, i * t:(i + 1) * t], v[:, :, i * t:(i + 1) * t]) for i in range(chunk)]
  # Definition: after N chunks, the next chunk's softmax set holds the sink and frames >= N F - R;
  # every non-sink frame before that has been absorbed, exactly once.
  total = chunks * chunk
  evicted = list(range(sink, max(sink, total - cfg.ring_frames)))
  assert int(state.frame) == total
  assert int(state.lin_count) == len(evicted) * frame_kv[0][0].shape[2]
  if not evicted:
    return
  k = np.concatenate([np.asarray(frame_kv[f][0], np.float64) for f in evicted], axis=2)
  v = np.concatenate([np.asarray(frame_kv[f][1], np.float64) for f in evicted], axis=2)
  phi = np.maximum(k, 0)
  want_s = np.einsum("lbthd,lbthe->lbhde", phi, v) / k.shape[2]
  want_z = phi.mean(axis=2)
  np.testing.assert_allclose(state.lin_s, want_s, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(state.lin_z, want_z, rtol=2e-4, atol=2e-5)
  # and the cache holds exactly the window frames
  held = sorted(int(f) for f in state.slot_frame if f >= 0)
  assert held == sorted(set(range(min(sink, total))) | set(range(max(sink, total - cfg.ring_frames), total)))


def test_state_size_does_not_grow():
  model, params = tiny_model(seed=5, linear_proj=True)
  cfg = StreamConfig(sparse_ratio=None)
  state = start(model, params, cfg, context(model, 3), jax.random.key(1), LATENT_HW)
  step = jitted_step(model, cfg)
  shapes = None
  for c in range(500):
    state, chunk = step(params, state)
    if c == 4:
      size5, shapes = state_bytes(state), jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), state)
  assert int(state.frame) == 1500
  assert state_bytes(state) == size5
  assert jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), state) == shapes
  assert np.isfinite(np.asarray(chunk)).all() and np.isfinite(np.asarray(state.lin_s)).all()


def test_scan_rollout_equals_python_loop():
  model, params = tiny_model(seed=6, linear_proj=True)
  params = random_linear_proj(params, seed=7)
  cfg = StreamConfig(sink_frames=3, window_frames=9, rope_cap=9, sparse_ratio=None)
  state = start(model, params, cfg, context(model, 4), jax.random.key(2), LATENT_HW)
  final, chunks = jax.jit(lambda p, s: rollout(model, p, cfg, s, 6))(params, state)
  step = jitted_step(model, cfg, donate=False)
  s = state
  for c in range(6):
    s, chunk = step(params, s)
    np.testing.assert_allclose(chunks[c], chunk, rtol=1e-5, atol=1e-5, err_msg=f"chunk {c}")
  np.testing.assert_allclose(final.lin_s, s.lin_s, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(final.slot_frame, s.slot_frame)


@pytest.mark.parametrize("sparse", [None, 0.5])
def test_zero_linear_proj_equals_softmax_alone(sparse):
  """linear_proj = 0 (the initialisation) leaves the sink + window softmax alone, also after frames
  have been absorbed; a non-zero linear_proj does change the output (the branch is live)."""
  model, params = tiny_model(seed=8, linear_proj=True)
  hw = (16, 16) if sparse else LATENT_HW   # 64 tokens per frame: several 64-token key blocks
  cfg = StreamConfig(sink_frames=3, window_frames=6, rope_cap=6, sparse_ratio=sparse)
  ctx = context(model, 5)
  compiled = {}

  def run(c, p):   # one compile per config, reused across parameter values
    if c not in compiled:
      compiled[c] = jax.jit(lambda p, s: rollout(model, p, c, s, 3))
    return compiled[c](p, start(model, p, c, ctx, jax.random.key(3), hw))

  hybrid_state, hybrid = run(cfg, params)
  _, alone = run(StreamConfig(sink_frames=3, window_frames=6, rope_cap=6, sparse_ratio=sparse, linear=False), params)
  assert int(hybrid_state.lin_count) > 0
  np.testing.assert_allclose(hybrid, alone, rtol=1e-5, atol=1e-5)
  _, live = run(cfg, random_linear_proj(params, seed=9))
  np.testing.assert_allclose(live[:2], alone[:2], rtol=1e-5, atol=1e-5)   # nothing absorbed before chunk 2
  assert not np.allclose(live[2:], alone[2:], atol=1e-3)


def test_prompt_switch():
  """Re-caching under the same prompt reproduces the cache (the window covers the video, absolute
  RoPE: the cache was written block-causally, as the re-cache recomputes it); a new prompt changes
  the cached K/V of layers after the first and the next chunk; without recache only the text changes."""
  model, params = tiny_model(seed=10)
  cfg = StreamConfig(chunk_frames=3, sink_frames=3, window_frames=12, rope="absolute", linear=False, sparse_ratio=None)
  ctx = context(model, 6)
  state = start(model, params, cfg, ctx, jax.random.key(4), LATENT_HW)
  step = jitted_step(model, cfg, donate=False)
  for _ in range(3):
    state, _ = step(params, state)
  same = switch_prompt(model, params, cfg, state, (state.text_k, state.text_v), recache=True)
  np.testing.assert_allclose(same.k, state.k, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(same.v, state.v, rtol=1e-4, atol=1e-4)
  new_kv = model.apply({"params": params}, context(model, 7), method=WanDiT.text_kv)
  plain = switch_prompt(model, params, cfg, state, new_kv, recache=False)
  np.testing.assert_array_equal(plain.k, state.k)
  np.testing.assert_allclose(plain.text_k, new_kv[0])
  switched = switch_prompt(model, params, cfg, state, new_kv, recache=True)
  np.testing.assert_allclose(switched.k[0], state.k[0], rtol=1e-4, atol=1e-4)   # layer 0 is text-independent
  assert not np.allclose(switched.k[1], state.k[1], atol=1e-3)
  np.testing.assert_array_equal(switched.slot_frame, state.slot_frame)
  _, a = step(params, plain)
  _, b = step(params, switched)
  assert not np.allclose(a, b, atol=1e-4)


def test_linear_readout_is_eq7():
  """The read-out equals Eq. 7's linear part, ((phi(q) S) / (phi(q) z + eps)) W^T + b, in float64."""
  from hybrid_forcing_jax.attention.hybrid import linear_readout
  rng = np.random.default_rng(0)
  b, l, h, d = 2, 5, 3, 8
  q = rng.standard_normal((b, l, h, d)).astype(np.float32)
  s = rng.random((b, h, d, d)).astype(np.float32)
  z = rng.random((b, h, d)).astype(np.float32)
  w, bias = rng.standard_normal((d, d)).astype(np.float32), rng.standard_normal(d).astype(np.float32)
  phi = np.maximum(q, 0).astype(np.float64)
  y = np.einsum("blhd,bhde->blhe", phi, s) / (np.einsum("blhd,bhd->blh", phi, z) + 1e-6)[..., None]
  want = np.einsum("blhd,ed->blhe", y, w) + bias
  proj = dict(weight=jnp.asarray(w), bias=jnp.asarray(bias))
  got = linear_readout(jnp.asarray(q), jnp.asarray(s), jnp.asarray(z), proj, 1e-6)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
