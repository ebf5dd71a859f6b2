"""GPU tests of the block-sparse kernels (run on the GPU machine):

  JAX_PLATFORMS=cuda python -m pytest -q tests/test_block_sparse_gpu.py

Both lowerings against the fp32 dense-mask reference (same selection table), bf16 inputs, judged by
relative Frobenius error ||out - ref|| / ||ref|| (bf16 lands in 1e-3..1e-2); no NaN; gradients too.
Skipped where no GPU is visible.
"""
import jax
import jax.numpy as jnp
import pytest

from kernels.block_sparse import block_sparse_attention, make_plan, reference_attention, select_blocks
from kernels.block_sparse import mosaic_attention


def _gpu():
  try:
    return any(d.platform == "gpu" for d in jax.devices())
  except RuntimeError:
    return False


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _gpu(), reason="needs an NVIDIA GPU (JAX_PLATFORMS=cuda)")]

IMPLS = ["pallas_triton", "pallas_mosaic"]
SHAPES = {
    "full": (1, 4680, 14040, 12, 128),
    "ragged": (2, 1000, 3001, 4, 128),
    "short": (1, 130, 70, 2, 64),
}


def _hopper():
  return str(getattr(jax.devices()[0], "compute_capability", "")).startswith("9")


def _inputs(seed, b, lq, lk, h, d):
  ks = jax.random.split(jax.random.PRNGKey(seed), 3)
  mk = lambda key, l: jax.random.normal(key, (b, l, h, d), jnp.float32).astype(jnp.bfloat16)
  return mk(ks[0], lq), mk(ks[1], lk), mk(ks[2], lk)


def _rel(a, b):
  a = jnp.asarray(a, jnp.float32)
  b = jnp.asarray(b, jnp.float32)
  return float(jnp.linalg.norm((a - b).ravel()) / jnp.linalg.norm(b.ravel()))


def _skip_unless(impl, d):
  if impl == "pallas_mosaic" and (not _hopper() or d % 64):
    pytest.skip("Mosaic GPU kernel needs Hopper and head_dim 64/128")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("ratio", [0.2, 1.0])
def test_forward_vs_fp32_reference(impl, shape, ratio):
  b, lq, lk, h, d = SHAPES[shape]
  _skip_unless(impl, d)
  q, k, v = _inputs(hash((impl, shape, ratio)) % 10_000, b, lq, lk, h, d)
  plan = make_plan(lq, lk, ratio)
  table = jax.jit(select_blocks, static_argnums=2)(q, k, plan)
  out, lse = jax.jit(lambda q, k, v, t: block_sparse_attention(q, k, v, sparse_ratio=ratio, impl=impl, table=t,
                                                               return_lse=True))(q, k, v, table)
  ref, ref_lse = jax.jit(lambda q, k, v, t: reference_attention(q, k, v, t, plan))(
      *(x.astype(jnp.float32) for x in (q, k, v)), table)
  assert not bool(jnp.isnan(out).any())
  err = _rel(out, ref)
  assert err < 1e-2, err
  assert float(jnp.abs(lse - ref_lse).max()) < 2e-2


@pytest.mark.parametrize("impl", IMPLS)
def test_ratio_one_matches_cudnn(impl):
  b, lq, lk, h, d = 1, 4680, 9360, 12, 128
  _skip_unless(impl, d)
  q, k, v = _inputs(7, b, lq, lk, h, d)
  out = jax.jit(lambda q, k, v: block_sparse_attention(q, k, v, sparse_ratio=1.0, impl=impl))(q, k, v)
  dense = jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
  assert _rel(out, dense) < 1e-2


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(1, 1560, 4680, 4, 128), (2, 1000, 3001, 2, 128)])
def test_gradients_vs_fp32_reference(impl, shape):
  b, lq, lk, h, d = shape
  _skip_unless(impl, d)
  q, k, v = _inputs(lq + lk, b, lq, lk, h, d)
  w = jax.random.normal(jax.random.PRNGKey(3), q.shape, jnp.float32)
  plan = make_plan(lq, lk, 0.2)
  table = select_blocks(q, k, plan)

  def loss(impl_, dtype):
    def f(q_, k_, v_):
      o = block_sparse_attention(q_.astype(dtype), k_.astype(dtype), v_.astype(dtype), sparse_ratio=0.2,
                                 impl=impl_, table=table)
      return jnp.sum(o.astype(jnp.float32) * w)
    return f

  got = jax.jit(jax.grad(loss(impl, jnp.bfloat16), argnums=(0, 1, 2)))(q, k, v)
  want = jax.jit(jax.grad(loss("xla", jnp.float32), argnums=(0, 1, 2)))(*(x.astype(jnp.float32) for x in (q, k, v)))
  for name, g, r in zip("qkv", got, want):
    assert not bool(jnp.isnan(g).any()), name
    assert _rel(g, r) < 2e-2, (name, _rel(g, r))


@pytest.mark.parametrize("blocks_per_step,slots", [(1, 2), (2, 1)])
@pytest.mark.parametrize("shape", ["full", "ragged"])
@pytest.mark.parametrize("ratio", [0.2, 0.35])   # 0.35 at Lk 14040: 77 blocks, an odd count
def test_mosaic_configs_vs_reference(blocks_per_step, slots, shape, ratio):
  b, lq, lk, h, d = SHAPES[shape]
  _skip_unless("pallas_mosaic", d)
  q, k, v = _inputs(hash((blocks_per_step, shape, ratio)) % 10_000, b, lq, lk, h, d)
  plan = make_plan(lq, lk, ratio)
  table = select_blocks(q, k, plan)
  cfg = mosaic_attention.MosaicConfig(max_concurrent_steps=slots, blocks_per_step=blocks_per_step)
  out, lse = jax.jit(lambda q, k, v, t: mosaic_attention.forward(q, k, v, t, plan=plan, config=cfg))(q, k, v, table)
  ref, ref_lse = jax.jit(lambda q, k, v, t: reference_attention(q, k, v, t, plan))(
      *(x.astype(jnp.float32) for x in (q, k, v)), table)
  assert not bool(jnp.isnan(out).any())
  assert _rel(out, ref) < 1e-2
  assert float(jnp.abs(lse - ref_lse).max()) < 2e-2
