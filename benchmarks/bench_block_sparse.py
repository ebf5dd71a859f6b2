"""Benchmark of block-sparse attention on one GPU (run on the GPU machine):

  JAX_PLATFORMS=cuda PYTHONUNBUFFERED=1 python benchmarks/bench_block_sparse.py [--out DIR] [--quick]

For Lq 4680 (one 3-frame chunk), 12 heads x 128, bf16, Lk in {4680, 9360, 14040} and ratio {0.2, 1.0}:
time of the selection alone, of the attention kernel alone (given the table) and of both in one jit
("total": what the model pays, no dispatch gap between them), for the Triton and Mosaic
GPU lowerings and for dense cuDNN (`jax.nn.dot_product_attention`). Also forward+backward at Lk 14040 and
a small sweep of kernel configurations. Times: median over repeats of (N back-to-back calls / N), after
warm-up, wall clock around `block_until_ready` (the calls queue asynchronously, so launch gaps hide).
TFLOP/s: "work" counts the FLOPs of the attended keys (4*B*H*Lq*keys*D, keys = n_sel*64 clipped to Lk);
"dense-eq" counts 4*B*H*Lq*Lk*D, the dense problem the call replaces.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax
import jax.numpy as jnp

from kernels.block_sparse import make_plan, select_blocks
from kernels.block_sparse import mosaic_attention, triton_attention
from kernels.block_sparse.api import block_sparse_attention

B, LQ, H, D = 1, 4680, 12, 128


def bench(fn, *args, n=20, reps=7, warmup=3):
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    for _ in range(n):
      r = fn(*args)
    jax.block_until_ready(r)
    times.append((time.perf_counter() - t0) / n)
  return statistics.median(times) * 1e3  # ms


def inputs(lk, seed=0):
  ks = jax.random.split(jax.random.PRNGKey(seed), 3)
  q = jax.random.normal(ks[0], (B, LQ, H, D), jnp.bfloat16)
  k = jax.random.normal(ks[1], (B, lk, H, D), jnp.bfloat16)
  v = jax.random.normal(ks[2], (B, lk, H, D), jnp.bfloat16)
  return q, k, v


def attn_fn(impl, plan, tcfg=triton_attention.DEFAULT_CONFIG, mcfg=mosaic_attention.DEFAULT_CONFIG):
  if impl == "pallas_triton":
    return jax.jit(lambda q, k, v, t: triton_attention.forward(q, k, v, t, block_q=64, block_k=64, config=tcfg))
  return jax.jit(lambda q, k, v, t: mosaic_attention.forward(q, k, v, t, plan=plan, config=mcfg))


def tflops(ms, keys, lk=None):
  return 4 * B * H * LQ * keys * D / (ms * 1e-3) / 1e12


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=os.environ.get("OUT", "."))
  ap.add_argument("--quick", action="store_true")
  args = ap.parse_args()
  dev = jax.devices()[0]
  print(f"device: {dev.device_kind} (cc {getattr(dev, 'compute_capability', '?')}), jax {jax.__version__}")
  rows, extra = [], []
  lks = [14040] if args.quick else [4680, 9360, 14040]
  for lk in lks:
    q, k, v = inputs(lk)
    cudnn = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn"))
    t_dense = bench(cudnn, q, k, v)
    rows.append(dict(lk=lk, ratio="dense", impl="cudnn", sel=0.0, attn=t_dense, total=t_dense,
                     work_tf=tflops(t_dense, lk), dense_tf=tflops(t_dense, lk), x_cudnn=1.0))
    for ratio in (0.2, 1.0):
      plan = make_plan(LQ, lk, ratio)
      sel = jax.jit(lambda q, k: select_blocks(q, k, plan))
      t_sel = bench(sel, q, k)
      table = sel(q, k)
      keys = min(plan.n_sel * 64, lk)
      for impl in ("pallas_triton", "pallas_mosaic"):
        try:
          t_attn = bench(attn_fn(impl, plan), q, k, v, table)
        except Exception as e:  # noqa: BLE001 - report and go on
          print(f"FAILED {impl} lk={lk} ratio={ratio}: {type(e).__name__}: {str(e)[:2000]}")
          traceback.print_exc(limit=3)
          continue
        # Selection and attention in one program, as the model runs them (no dispatch gap between them).
        f_attn = attn_fn(impl, plan)
        fused = jax.jit(lambda q, k, v: f_attn(q, k, v, select_blocks(q, k, plan)))
        tot = bench(fused, q, k, v)
        rows.append(dict(lk=lk, ratio=ratio, impl=impl, sel=t_sel, attn=t_attn, total=tot,
                         work_tf=tflops(t_attn, keys), dense_tf=tflops(tot, lk), x_cudnn=tot / t_dense))
      print(json.dumps(rows[-3:]))

  # Configuration sweeps at the target shape.
  lk = 14040
  q, k, v = inputs(lk, seed=1)
  plan = make_plan(LQ, lk, 0.2)
  table = select_blocks(q, k, plan)
  keys = plan.n_sel * 64
  for nw, ns in ((4, 2), (4, 3), (8, 2), (8, 3)):
    try:
      cfg = triton_attention.TritonConfig(num_warps=nw, num_stages=ns)
      t = bench(attn_fn("pallas_triton", plan, tcfg=cfg), q, k, v, table)
      extra.append(dict(what=f"triton fwd warps={nw} stages={ns}", ms=t, work_tf=tflops(t, keys)))
    except Exception as e:  # noqa: BLE001
      print(f"FAILED triton cfg {nw},{ns}: {e!s:.500}")
  plan1 = make_plan(LQ, lk, 1.0)
  table1 = select_blocks(q, k, plan1)
  M = mosaic_attention.MosaicConfig
  sweep = [(plan, table, "0.2", M(max_concurrent_steps=2)), (plan, table, "0.2", M(max_concurrent_steps=2, use_schedule_barrier=False)),
           (plan, table, "0.2", M(max_concurrent_steps=1, blocks_per_step=2)),
           (plan1, table1, "1.0", M(shared_blocks_per_step=2, shared_max_concurrent_steps=2)),
           (plan1, table1, "1.0", M(shared_blocks_per_step=2, shared_max_concurrent_steps=2, use_schedule_barrier=False)),
           (plan1, table1, "1.0", M(shared_blocks_per_step=1, shared_max_concurrent_steps=4))]
  for rp, tb, rname, cfg in sweep:
    try:
      t = bench(attn_fn("pallas_mosaic", rp, mcfg=cfg), q, k, v, tb)
      extra.append(dict(what=f"mosaic fwd ratio={rname} {cfg}", ms=t, work_tf=tflops(t, min(rp.n_sel * 64, lk))))
    except Exception as e:  # noqa: BLE001
      print(f"FAILED mosaic cfg {cfg}: {e!s:.800}")

  # Forward + backward (training) at Lk 14040, ratio 0.2, selection included.
  def train_fn(impl):
    def loss(q, k, v):
      if impl == "cudnn":
        o = jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
      else:
        o = block_sparse_attention(q, k, v, sparse_ratio=0.2, impl=impl)
      return jnp.sum(o.astype(jnp.float32))
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  for impl in ("cudnn", "pallas_triton", "pallas_mosaic"):
    try:
      t = bench(train_fn(impl), q, k, v, n=5, reps=5)
      extra.append(dict(what=f"fwd+bwd {impl} (sel incl.)", ms=t))
    except Exception as e:  # noqa: BLE001
      print(f"FAILED fwd+bwd {impl}: {e!s:.500}")

  with open(os.path.join(args.out, "bench_block_sparse.json"), "w") as f:
    json.dump(dict(device=dev.device_kind, jax=jax.__version__, rows=rows, extra=extra), f, indent=1)
  print("\n| Lk | ratio | impl | select ms | attention ms | total ms | x cuDNN | work TF/s | dense-eq TF/s |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['lk']} | {r['ratio']} | {r['impl']} | {r['sel']:.3f} | {r['attn']:.3f} | {r['total']:.3f} | "
          f"{r['x_cudnn']:.2f} | {r['work_tf']:.0f} | {r['dense_tf']:.0f} |")
  print()
  for e in extra:
    print(f"- {e['what']}: {e['ms']:.3f} ms" + (f" ({e['work_tf']:.0f} TF/s work)" if "work_tf" in e else ""))


if __name__ == "__main__":
  main()
