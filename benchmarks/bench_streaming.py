"""Streaming chunk time of the DiT (4 denoising + 1 cache forward per chunk), full Wan2.1-1.3B size,
random bf16 weights made on the device, 832x480 (latent 60x104, 1560 tokens per frame), batch 1.

  PYTHONUNBUFFERED=1 python -m benchmarks.bench_streaming [--setting=both|hybrid|self_forcing]
      [--chunks=20] [--sparse_backend=auto] [--tiny]

Each setting runs in its own process (clean peak-memory counter) and prints one JSON line:
  compile_s          compiling the chunk step (once; one executable serves the whole video)
  first_chunk_ms     prompt K/V + the first chunk, after compilation (time to first chunk)
  chunk_ms_*         steady state (after the window is full), each chunk synced; VAE excluded
  fps                12 video frames per chunk / median chunk time
  peak_gib           peak GPU memory of the process (weights included)
  forward_ms, commit_ms, self_attn_ms, linear_ms: where the time goes — one denoising DiT forward,
                     the cache write + linear absorption, and the self-attention core (RoPE of cached
                     keys, gather, softmax part) / linear read-out of one layer, x30 layers x5 forwards
                     gives their share of a chunk.
Hybrid's block-sparse softmax: `--sparse_backend=auto` (the Mosaic GPU kernel on Hopper), or `xla` (the
dense-mask reference, as in the first measurement below). End to end with the VAE: bench_end_to_end.py.

Measured (H100 80GB HBM3, jax 0.10.2, 10 steady-state chunks, random weights, VAE excluded):
  setting       compile  first chunk  chunk (median)  FPS    peak GiB  state   1 forward  commit  self-attn/layer
  self_forcing   7.7 s    234 ms       460 ms         26.1   13.4      5.1 GB   89 ms     4.6 ms  2.2 ms (73% of chunk)
  hybrid (xla)  29.3 s    596 ms      1032 ms         11.6   10.7      1.8 GB  206 ms     5.7 ms  5.9 ms (86% of chunk)
Where the time goes: a chunk is 5 DiT forwards (5 x 89 ms + commit ~ 460 ms dense); self-attention
(gather + RoPE of the cached keys + softmax) is most of it. The hybrid setting's softmax runs on the
dense-mask XLA reference of the block-sparse selection: it still computes all 4680 x 14040 logits in
float32 plus top-k and masking, so it is slower than cuDNN's dense 32760-key window; the Pallas kernel
(top 20% of blocks, ~11.6x fewer attention FLOPs than Self-Forcing's window) is what should make it
faster. Linear read-out (0.27 ms/layer) and the cache write + absorption (5.7 ms/chunk) are small.
First chunk < steady chunk because the window is still empty. Peak memory includes the 2.8 GB weights.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import json
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from hybrid_forcing_jax.config import WAN_1_3B, tiny_config
from hybrid_forcing_jax.dit import WanDiT, init_params
from hybrid_forcing_jax.streaming import positions
from hybrid_forcing_jax.streaming.config import from_config
from hybrid_forcing_jax.attention.hybrid import linear_readout, stream_attention
from hybrid_forcing_jax.streaming.sampler import jitted_step, start, stream_forward
from hybrid_forcing_jax.streaming.state import cache_view, commit_chunk, state_bytes
from hybrid_forcing_jax.rope import rope_tables


def timed(fn, *args, iters=5):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - t0) * 1e3)
  return statistics.median(times)


def run_setting(name: str, args):
  cfg = from_config(importlib.import_module(f"configs.{name}").get_config().stream)   # configs/<setting>.py
  import dataclasses
  if cfg.sparse_ratio is not None:
    cfg = dataclasses.replace(cfg, sparse_backend=args.sparse_backend)
  wan = tiny_config(num_layers=2) if args.tiny else WAN_1_3B
  wan = dataclasses.replace(wan, linear_proj=cfg.linear)
  hw = (8, 8) if args.tiny else (60, 104)
  dtype = jnp.bfloat16
  params = jax.jit(functools.partial(init_params, wan, param_dtype=dtype))(jax.random.key(0))
  model = WanDiT(wan, dtype=dtype, param_dtype=dtype, attention_backend="auto")
  ctx = jax.random.normal(jax.random.key(1), (1, 512, wan.text_dim), dtype)
  begin = jax.jit(lambda p, c: start(model, p, cfg, c, jax.random.key(2), hw))
  step = jitted_step(model, cfg)
  state = begin(params, ctx)
  t0 = time.perf_counter()
  step_c = step.lower(params, state).compile()
  compile_s = time.perf_counter() - t0
  del state
  t0 = time.perf_counter()
  state = begin(params, ctx)
  state, chunk = step_c(params, state)
  chunk.block_until_ready()
  first_ms = (time.perf_counter() - t0) * 1e3
  for _ in range(cfg.cache_slots // cfg.chunk_frames + 2):   # fill the window: steady state
    state, chunk = step_c(params, state)
  chunk.block_until_ready()
  times = []
  for _ in range(args.chunks):
    t0 = time.perf_counter()
    state, chunk = step_c(params, state)
    chunk.block_until_ready()
    times.append((time.perf_counter() - t0) * 1e3)
  median = statistics.median(times)

  # Where the time goes (steady-state shapes).
  x = jnp.zeros((1, cfg.chunk_frames) + hw + (wan.in_dim,), jnp.float32)
  fwd = jax.jit(lambda p, s, x: stream_forward(model, p, cfg, s, x, 937.5)[0])
  kv = jax.jit(lambda p, s, x: stream_forward(model, p, cfg, s, x, 0.0)[1])(params, state, x)
  commit = jax.jit(lambda s, k, v, x: commit_chunk(cfg, s, k, v, x))
  forward_ms = timed(fwd, params, state, x)
  commit_ms = timed(commit, state, kv[0], kv[1], x)
  tok = (hw[0] // 2) * (hw[1] // 2)
  h, d = wan.num_heads, wan.head_dim
  q = jax.random.normal(jax.random.key(3), (1, cfg.chunk_frames * tok, h, d), dtype)
  qc, qs = rope_tables(wan, positions.query_positions(cfg, state.frame), hw[0] // 2, hw[1] // 2)
  cache, view = cache_view(cfg, wan, state)
  layer = jax.tree_util.tree_map(lambda a: a[0], cache)
  view = view.replace(has_linear=jnp.asarray(False))
  attn = jax.jit(lambda q, layer: stream_attention(dataclasses.replace(cfg, linear=False), q, q, q, qc, qs, layer,
                                                   view, tok, None, "auto"))
  self_attn_ms = timed(attn, q, layer)
  proj = dict(weight=jnp.zeros((d, d), dtype), bias=jnp.zeros((d,), dtype))
  lin = jax.jit(lambda q, s, z: linear_readout(q, s, z, proj, 1e-6))
  linear_ms = timed(lin, q, layer.lin_s, layer.lin_z) if cfg.linear else 0.0
  stats = jax.devices()[0].memory_stats() or {}
  print(json.dumps(dict(
      setting=name, device=str(jax.devices()[0].device_kind), tiny=args.tiny, latent_hw=hw,
      sparse_backend=cfg.sparse_backend if cfg.sparse_ratio else None, compile_s=round(compile_s, 1),
      first_chunk_ms=round(first_ms, 1), chunk_ms_median=round(median, 1), chunk_ms_min=round(min(times), 1),
      chunk_ms_max=round(max(times), 1), chunks=args.chunks, fps=round(12 / (median / 1e3), 2),
      peak_gib=round(stats.get("peak_bytes_in_use", 0) / 2**30, 2), state_mib=round(state_bytes(state) / 2**20, 1),
      forward_ms=round(forward_ms, 1), commit_ms=round(commit_ms, 2),
      self_attn_ms_per_layer=round(self_attn_ms, 2), linear_ms_per_layer=round(linear_ms, 3),
      self_attn_share=round(5 * wan.num_layers * self_attn_ms / median, 3),
      finite=bool(jnp.isfinite(chunk).all()))))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--setting", default="both", choices=("both", "hybrid", "self_forcing"))
  parser.add_argument("--chunks", type=int, default=20)
  parser.add_argument("--sparse_backend", default="auto")
  parser.add_argument("--tiny", action="store_true", help="a tiny model, to try the script on a CPU")
  args = parser.parse_args()
  if args.setting == "both":
    for name in ("self_forcing", "hybrid"):
      cmd = [sys.executable, "-m", "benchmarks.bench_streaming", f"--setting={name}", f"--chunks={args.chunks}",
             f"--sparse_backend={args.sparse_backend}"] + (["--tiny"] if args.tiny else [])
      subprocess.run(cmd, check=False)
    return
  run_setting(args.setting, args)


if __name__ == "__main__":
  main()
