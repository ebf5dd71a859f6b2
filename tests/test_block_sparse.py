"""CPU (CI) tests of the block-sparse attention: selection vs NumPy, and the Triton kernel in interpret mode
vs the dense-mask reference, forward and gradients, on fresh random inputs."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybrid_forcing_jax.attention import attention
from kernels.block_sparse import (UnsupportedError, block_sparse_attention, dense_mask, inverse_table, make_plan,
                                  num_topk_blocks, reference_attention, select_blocks, select_blocks_numpy)


def _qkv(seed, b, lq, lk, h, d, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  mk = lambda l: jnp.asarray(rng.standard_normal((b, l, h, d)), dtype)
  return mk(lq), mk(lk), mk(lk)


def _rel(a, b):
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def test_topk_count_is_floor():
  assert num_topk_blocks(0.2, 220) == 44     # Lk 14040
  assert num_topk_blocks(0.2, 74) == 14
  assert num_topk_blocks(0.2, 29) == 5       # floor, not ceil (5.8)
  assert num_topk_blocks(0.2, 3) == 1        # at least one block
  assert num_topk_blocks(1.0, 17) == 17
  with pytest.raises(ValueError):
    num_topk_blocks(0.0, 10)


@pytest.mark.parametrize("b,lq,lk,h,d,ratio,sink,own", [
    (2, 150, 330, 3, 32, 0.3, 0, False),
    (1, 64, 640, 2, 16, 0.2, 100, False),
    (1, 200, 700, 1, 32, 0.2, 130, True),
    (1, 37, 50, 2, 16, 0.5, 0, False),        # one key block, ragged
])
def test_selection_matches_numpy(b, lq, lk, h, d, ratio, sink, own):
  q, k, _ = _qkv(lq * 7 + lk, b, lq, lk, h, d)
  plan = make_plan(lq, lk, ratio, keep_sink_tokens=sink, keep_own_chunk=own)
  got = np.asarray(select_blocks(q, k, plan))
  want = select_blocks_numpy(np.asarray(q), np.asarray(k), plan)
  assert got.shape == (b, h, plan.n_q_blocks, plan.n_sel)
  np.testing.assert_array_equal(got, want)
  assert (np.diff(got, axis=-1) > 0).all()  # distinct and ascending
  if sink:
    assert set(range(-(-sink // 64))) <= set(got[0, 0, 0].tolist())


def test_selection_mean_pools_ragged_block_over_true_length():
  # The last key block holds 10 keys equal to +u; every full block averages to ~0. A mean over 64 would
  # shrink it 6.4x but it must still win; a sum-based score would also pass, so compare the score value.
  from kernels.block_sparse.selection import block_scores
  d = 16
  u = np.zeros(d, np.float32); u[0] = 1.0
  k = np.zeros((1, 138, 1, d), np.float32)
  k[0, 128:, 0] = u
  q = np.tile(u, (1, 64, 1, 1)).reshape(1, 64, 1, d)
  s = np.asarray(block_scores(jnp.asarray(q), jnp.asarray(k)))
  np.testing.assert_allclose(s[0, 0, 0, 2], 1.0, rtol=1e-6)


def test_inverse_table():
  q, k, _ = _qkv(3, 2, 300, 500, 2, 16)
  plan = make_plan(300, 500, 0.3)
  table = np.asarray(select_blocks(q, k, plan))
  ids, counts = (np.asarray(x) for x in inverse_table(jnp.asarray(table), plan.n_k_blocks))
  for b in range(2):
    for h in range(2):
      for kb in range(plan.n_k_blocks):
        want = [qb for qb in range(plan.n_q_blocks) if kb in table[b, h, qb]]
        assert counts[b, h, kb] == len(want)
        assert ids[b, h, kb, :len(want)].tolist() == want


CASES = {
    "ragged_b2_h2": dict(b=2, lq=150, lk=330, h=2, d=64, ratio=0.3),
    "one_key_block": dict(b=1, lq=100, lk=40, h=2, d=32, ratio=0.2),
    "forced_sink_own": dict(b=1, lq=130, lk=400, h=2, d=32, ratio=0.2, keep_sink_tokens=70, keep_own_chunk=True),
    "d128": dict(b=1, lq=64, lk=260, h=1, d=128, ratio=0.5),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_triton_forward_matches_reference(name):
  c = dict(CASES[name])
  b, lq, lk, h, d, ratio = (c.pop(x) for x in ("b", "lq", "lk", "h", "d", "ratio"))
  q, k, v = _qkv(hash(name) % 1000, b, lq, lk, h, d)
  plan = make_plan(lq, lk, ratio, **c)
  table = select_blocks(q, k, plan)
  out, lse = block_sparse_attention(q, k, v, sparse_ratio=ratio, impl="pallas_triton", interpret=True,
                                    return_lse=True, **c)
  ref_out, ref_lse = reference_attention(q, k, v, table, plan)
  assert np.isfinite(np.asarray(out)).all()
  np.testing.assert_allclose(out, ref_out, atol=2e-5, rtol=2e-5)
  np.testing.assert_allclose(lse, ref_lse, atol=2e-5, rtol=2e-5)
  # Masked-out blocks really are excluded: the mask keeps exactly n_sel blocks' worth of keys.
  assert plan.n_sel <= plan.n_k_blocks


def test_ratio_one_equals_dense_attention():
  q, k, v = _qkv(11, 2, 130, 200, 2, 32)
  out = block_sparse_attention(q, k, v, sparse_ratio=1.0, impl="pallas_triton", interpret=True)
  dense = attention(q, k, v, backend="xla")
  np.testing.assert_allclose(out, dense, atol=2e-5, rtol=2e-5)
  lse = block_sparse_attention(q, k, v, sparse_ratio=1.0, impl="pallas_triton", interpret=True, return_lse=True)[1]
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(32)
  np.testing.assert_allclose(lse, jax.nn.logsumexp(logits, axis=-1), atol=2e-5, rtol=2e-5)


def test_sparse_differs_from_dense():
  # Guards against a kernel that ignores the table.
  q, k, v = _qkv(12, 1, 64, 640, 1, 32)
  sparse = block_sparse_attention(q, k, v, sparse_ratio=0.2, impl="pallas_triton", interpret=True)
  dense = attention(q, k, v, backend="xla")
  assert _rel(sparse, dense) > 0.1


@pytest.mark.parametrize("case", ["ragged_b2_h2", "forced_sink_own"])
def test_triton_gradients_match_reference(case):
  c = dict(CASES[case])
  b, lq, lk, h, d, ratio = (c.pop(x) for x in ("b", "lq", "lk", "h", "d", "ratio"))
  q, k, v = _qkv(100 + len(case), b, lq, lk, h, d)
  w = jnp.asarray(np.random.default_rng(5).standard_normal(q.shape), jnp.float32)
  wl = jnp.asarray(np.random.default_rng(6).standard_normal((b, h, lq)), jnp.float32)

  def loss(impl):
    def f(q_, k_, v_):
      o, l = block_sparse_attention(q_, k_, v_, sparse_ratio=ratio, impl=impl, interpret=True, return_lse=True, **c)
      return jnp.sum(o * w) + jnp.sum(l * wl)
    return f

  got = jax.grad(loss("pallas_triton"), argnums=(0, 1, 2))(q, k, v)
  want = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
  for name, g, r in zip("qkv", got, want):
    assert np.isfinite(np.asarray(g)).all(), name
    assert _rel(g, r) < 1e-5, (name, _rel(g, r))


def test_bf16_interpret_close_to_fp32_reference():
  q, k, v = _qkv(21, 1, 150, 300, 2, 64, jnp.bfloat16)
  plan = make_plan(150, 300, 0.4)
  table = select_blocks(q, k, plan)
  out = block_sparse_attention(q, k, v, sparse_ratio=0.4, impl="pallas_triton", interpret=True)
  ref, _ = reference_attention(*(x.astype(jnp.float32) for x in (q, k, v)), table, plan)
  assert out.dtype == jnp.bfloat16
  assert _rel(out, ref) < 1e-2


def test_dense_mask_block_structure():
  q, k, _ = _qkv(31, 1, 130, 260, 1, 16)
  plan = make_plan(130, 260, 0.4)
  table = np.asarray(select_blocks(q, k, plan))
  m = np.asarray(dense_mask(jnp.asarray(table), plan))
  assert m.shape == (1, 1, 130, 260)
  for qi in range(plan.n_q_blocks):
    for kb in range(plan.n_k_blocks):
      blk = m[0, 0, qi * 64:(qi + 1) * 64, kb * 64:(kb + 1) * 64]
      assert blk.all() if kb in table[0, 0, qi] else not blk.any()


def test_entry_point_routing_and_errors():
  q, k, v = _qkv(41, 1, 70, 130, 1, 16)
  via_entry = attention(q, k, v, sparse_ratio=0.5, backend="xla")
  direct = block_sparse_attention(q, k, v, sparse_ratio=0.5, impl="xla")
  np.testing.assert_allclose(via_entry, direct, atol=1e-6)
  assert attention(q, k, v, sparse_ratio=0.5).shape == q.shape            # auto -> xla on CPU
  with pytest.raises(ValueError, match="cudnn"):
    attention(q, k, v, sparse_ratio=0.5, backend="cudnn")
  with pytest.raises(ValueError, match="kv_lengths"):
    attention(q, k, v, sparse_ratio=0.5, backend="xla", kv_lengths=jnp.array([100]))
  with pytest.raises(UnsupportedError, match="pallas_mosaic"):
    attention(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), sparse_ratio=0.5,
              backend="pallas_mosaic")
  with pytest.raises(UnsupportedError, match="pallas_triton"):
    block_sparse_attention(q[..., :12], k[..., :12], v[..., :12], impl="pallas_triton", interpret=True)
  with pytest.raises(UnsupportedError, match="pallas_triton"):
    block_sparse_attention(q, k, v, impl="pallas_triton", interpret=False)   # no GPU here


@pytest.mark.parametrize("ratio", [0.5, 1.0])   # 1.0: the shared K/V ring (both query blocks, one stream)
def test_mosaic_kernel_in_gpu_interpreter(ratio):
  """The Hopper kernel's pipeline (table-driven TMA ring, barriers, ping-pong, ragged last key block, odd
  number of query blocks) run by jax's private Mosaic GPU interpreter on CPU; the matmuls there are plain
  dots (the interpreter lacks transposed-ref wgmma)."""
  try:
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
  except ImportError:
    pytest.skip("this jax has no Mosaic GPU interpreter")
  from kernels.block_sparse import mosaic_attention
  q, k, v = _qkv(51, 1, 150, 330, 1, 64, jnp.bfloat16)
  plan = make_plan(150, 330, ratio)
  table = select_blocks(q, k, plan)
  out, lse = mosaic_attention.forward(q, k, v, table, plan=plan, interpret=InterpretGPUParams())
  ref, ref_lse = reference_attention(*(x.astype(jnp.float32) for x in (q, k, v)), table, plan)
  assert _rel(out, ref) < 1e-2
  np.testing.assert_allclose(lse, ref_lse, atol=1e-3)
