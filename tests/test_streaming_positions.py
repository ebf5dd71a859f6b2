"""Which frames a chunk sees and at which temporal RoPE positions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybrid_forcing_jax.attention import attention
from hybrid_forcing_jax.streaming import positions
from hybrid_forcing_jax.streaming.config import StreamConfig
from hybrid_forcing_jax.attention.hybrid import CacheView, LayerCache, stream_attention
from hybrid_forcing_jax.streaming.sampler import chunk_step, start, stream_forward
from hybrid_forcing_jax.rope import apply_rope
from tests.streaming_fixtures import LATENT_HW, context, tiny_model


def softmax_set(cfg, c):
  """The definition: sink [0, S) plus the most recent frames filling W, the current chunk included."""
  f0 = c * cfg.chunk_frames
  sink = list(range(min(cfg.sink_frames, f0)))
  recent = list(range(max(cfg.sink_frames, f0 + cfg.chunk_frames - (cfg.window_frames - cfg.sink_frames)), f0))
  return sink + recent


def expected_position(cfg, c, f):
  f0 = c * cfg.chunk_frames
  if cfg.rope == "absolute" or f < cfg.sink_frames or f0 + cfg.chunk_frames <= cfg.rope_cap:
    return f
  return f - (f0 + cfg.chunk_frames - cfg.rope_cap)


@pytest.mark.parametrize("cfg", [StreamConfig(), StreamConfig(chunk_frames=1, sink_frames=1, window_frames=5, rope_cap=7),
                                 StreamConfig(sink_frames=1, window_frames=8, rope_cap=21)])
def test_relative_rope_never_reaches_cap(cfg):
  for c in range(130):
    frames, slots, n_valid = positions.cached_frames(cfg, c * cfg.chunk_frames)
    want = softmax_set(cfg, c)
    assert list(np.asarray(frames[:int(n_valid)])) == want and (np.asarray(frames[int(n_valid):]) == -1).all()
    pos = np.asarray(positions.frame_positions(cfg, c * cfg.chunk_frames, frames))[:int(n_valid)]
    q = np.asarray(positions.query_positions(cfg, c * cfg.chunk_frames))
    assert list(pos) == [expected_position(cfg, c, f) for f in want]
    assert list(q) == [expected_position(cfg, c, c * cfg.chunk_frames + i) for i in range(cfg.chunk_frames)]
    assert max(list(pos) + list(q)) < cfg.rope_cap
    if (c + 1) * cfg.chunk_frames >= cfg.rope_cap:   # steady state: the chunk sits at [M - F, M)
      assert list(q) == list(range(cfg.rope_cap - cfg.chunk_frames, cfg.rope_cap))
    # slots: distinct, and a frame's slot is where commit put it
    valid_slots = np.asarray(slots[:int(n_valid)])
    assert len(set(valid_slots)) == len(valid_slots)


def test_absolute_rope_is_frame_number():
  cfg = StreamConfig(sink_frames=0, window_frames=21, rope="absolute", linear=False, sparse_ratio=None)
  frames, _, n = positions.cached_frames(cfg, 300)
  np.testing.assert_array_equal(positions.frame_positions(cfg, 300, frames)[:int(n)], np.arange(282, 300))
  np.testing.assert_array_equal(positions.query_positions(cfg, 300), [300, 301, 302])


@pytest.mark.parametrize("chunk,sink,window,cap", [(3, 3, 9, 9), (1, 1, 4, 5), (3, 0, 6, 12)])
def test_window_and_positions_through_the_model(chunk, sink, window, cap):
  """One layer: cached K/V of a frame depend only on its own clean latent, so the streaming velocity of
  chunk c equals a bidirectional forward over [softmax-set frames | chunk] placed at the defined RoPE
  positions (the definition written out, independent of the ring buffer)."""
  model, params = tiny_model(seed=11, num_layers=1)
  cfg = StreamConfig(chunk_frames=chunk, sink_frames=sink, window_frames=window, rope_cap=cap, linear=False,
                     sparse_ratio=None)
  ctx = context(model, 8)
  state = start(model, params, cfg, ctx, jax.random.key(5), LATENT_HW)
  step = jax.jit(lambda p, s: chunk_step(model, p, cfg, s))
  vel = jax.jit(lambda p, s, x: stream_forward(model, p, cfg, s, x, 937.5)[0])
  ref = jax.jit(lambda p, x, t, pos: model.apply({"params": p}, x, t, ctx, frame_positions=pos))
  clean = []
  x = jax.random.normal(jax.random.key(6), (1, chunk) + LATENT_HW + (model.config.in_dim,))
  for c in range(8):
    seen = softmax_set(cfg, c)
    pos = [expected_position(cfg, c, f) for f in seen + [c * chunk + i for i in range(chunk)]]
    inp = jnp.concatenate([clean[f] for f in seen] + [x], axis=1)
    t = jnp.concatenate([jnp.zeros((1, len(seen))), jnp.full((1, chunk), 937.5)], axis=1)
    want = ref(params, inp, t, jnp.asarray(pos))[:, -chunk:]
    np.testing.assert_allclose(vel(params, state, x), want, rtol=1e-4, atol=1e-4, err_msg=f"chunk {c}")
    state, out = step(params, state)
    clean += [out[:, i:i + 1] for i in range(chunk)]


def test_sparse_softmax_uses_paper_key_order_and_selection():
  """Sparse mode attends over exactly [valid cached frames (chronological) | chunk] with the shared
  top-k selection, in every warm-up branch and in steady state."""
  cfg = StreamConfig(sink_frames=3, window_frames=9, rope_cap=9, linear=False, sparse_ratio=0.25)
  b, tok, h, d, f = 1, 64, 2, 16, 3
  ks = jax.random.split(jax.random.key(0), 6)
  cache_k = jax.random.normal(ks[0], (b, cfg.cache_slots, tok, h, d))
  cache_v = jax.random.normal(ks[1], (b, cfg.cache_slots, tok, h, d))
  q = jax.random.normal(ks[2], (b, f * tok, h, d))
  k = jax.random.normal(ks[3], (b, f * tok, h, d))
  v = jax.random.normal(ks[4], (b, f * tok, h, d))
  from hybrid_forcing_jax.config import tiny_config
  from hybrid_forcing_jax.rope import rope_tables
  wan = tiny_config(dim=32, num_heads=2)
  for frame in (0, 3, 6, 30):
    frames, slots, n = positions.cached_frames(cfg, frame)
    kc, ksn = rope_tables(wan, positions.frame_positions(cfg, frame, frames), 8, 8)
    qc, qs = rope_tables(wan, positions.query_positions(cfg, frame), 8, 8)
    view = CacheView(gather=slots, n_valid=n, has_linear=jnp.asarray(False), key_cos=kc, key_sin=ksn)
    cache = LayerCache(k=cache_k, v=cache_v, lin_s=None, lin_z=None)
    got = stream_attention(cfg, q, k, v, qc, qs, cache, view, tok, None, "xla")
    nv = int(n)
    ck = jnp.take(cache_k, slots[:nv], axis=1).reshape(b, nv * tok, h, d)
    cv = jnp.take(cache_v, slots[:nv], axis=1).reshape(b, nv * tok, h, d)
    keys = jnp.concatenate([apply_rope(ck, kc[:nv * tok], ksn[:nv * tok]), apply_rope(k, qc, qs)], axis=1)
    want = attention(apply_rope(q, qc, qs), keys, jnp.concatenate([cv, v], axis=1), backend="xla", sparse_ratio=0.25)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"frame {frame}")
    dense = attention(apply_rope(q, qc, qs), keys, jnp.concatenate([cv, v], axis=1), backend="xla")
    if nv:
      assert not np.allclose(got, dense, atol=1e-3)   # the selection really drops blocks
