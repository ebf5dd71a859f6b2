"""One Wan DiT forward at full size (random bf16 weights), per attention layout.

  PYTHONUNBUFFERED=1 python -m benchmarks.bench_dit_forward [--config=wan_1_3b] [--iters=10]

Rows: a 3-latent-frame chunk alone (4680 tokens, what a streaming step computes with an empty cache),
21 frames bidirectional (teacher/critic pass), 21 frames block-causal (training rollout). 832x480 video
= 60x104 latents; 512 text tokens with the text K/V precomputed once. Median wall time of `iters`
calls after warm-up, around block_until_ready; model TFLOP/s counts matmuls and attention.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from hybrid_forcing_jax.config import PRESETS
from hybrid_forcing_jax.dit import AttentionLayout, WanDiT, init_params

FLAGS = flags.FLAGS
flags.DEFINE_enum("config", "wan_1_3b", sorted(PRESETS), "Model size")
flags.DEFINE_integer("iters", 10, "Timed calls per row")
flags.DEFINE_string("backend", "auto", "Attention backend")


def flops(config, tokens, visible_keys, text_len=512):
  d, f = config.dim, config.ffn_dim
  linear = 2 * tokens * (6 * d * d + 2 * d * f)
  attention = 4 * visible_keys * d + 4 * tokens * text_len * d  # visible_keys: sum over queries
  return config.num_layers * (linear + attention)


def main(argv):
  del argv
  config = PRESETS[FLAGS.config]
  model = WanDiT(config, attention_backend=FLAGS.backend)
  params = jax.jit(lambda k: init_params(config, k))(jax.random.key(0))
  ctx = jax.random.normal(jax.random.key(1), (1, 512, config.text_dim), jnp.bfloat16)
  text_kv = jax.jit(lambda p, c: model.apply({"params": p}, c, method=WanDiT.text_kv))(params, ctx)
  frame_tokens = 30 * 52
  rows = []
  for name, frames, layout in [("chunk of 3 frames", 3, AttentionLayout()),
                               ("21 frames bidirectional", 21, AttentionLayout()),
                               ("21 frames block-causal", 21, AttentionLayout.block_causal(3))]:
    x = jax.random.normal(jax.random.key(2), (1, frames, 60, 104, config.in_dim), jnp.bfloat16)
    t = jnp.full((1, frames), 500.0)
    fn = jax.jit(lambda p, x, t, kv, layout=layout: model.apply({"params": p}, x, t, text_kv=kv, layout=layout))
    start = time.perf_counter()
    fn(params, x, t, text_kv).block_until_ready()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(FLAGS.iters):
      start = time.perf_counter()
      fn(params, x, t, text_kv).block_until_ready()
      times.append(time.perf_counter() - start)
    ms = 1e3 * float(np.median(times))
    tokens = frames * frame_tokens
    if layout.kind == "block_causal":
      chunk = 3 * frame_tokens
      visible = sum(chunk * (c + 1) * chunk for c in range(frames // 3))
    else:
      visible = tokens * tokens
    rows.append((name, tokens, ms, flops(config, tokens, visible) / ms / 1e9, compile_s))
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {FLAGS.config}, attention {FLAGS.backend}")
  print(f"{'layout':28s} {'tokens':>7s} {'ms':>9s} {'TFLOP/s':>8s} {'first call s':>13s}")
  for name, tokens, ms, tflops, compile_s in rows:
    print(f"{name:28s} {tokens:7d} {ms:9.2f} {tflops:8.1f} {compile_s:13.1f}")
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    print(f"peak GPU memory {stats['peak_bytes_in_use'] / 2**30:.2f} GiB")


if __name__ == "__main__":
  app.run(main)
