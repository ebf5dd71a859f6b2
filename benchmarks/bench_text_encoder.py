"""umT5-XXL encode time for one 512-token prompt (random bf16 weights made on the device).

  PYTHONUNBUFFERED=1 python -m benchmarks.bench_text_encoder [--tiny] [--iters=20] [--batch=1,2]

Prints one JSON line per batch size: median / min / max milliseconds of a jitted encode after warm-up
(the whole 512 positions are computed whatever the prompt's length, so the padding count is moot).
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from hybrid_forcing_jax.text_encoder import TEXT_LEN, UMT5_XXL, UMT5Encoder, init_params, tiny_umt5_config


def flops_per_prompt(c, length: int) -> float:
  dense = 2 * length * (4 * c.dim * c.dim_attn + 3 * c.dim * c.ffn_dim)
  attn = 2 * 2 * length * length * c.dim_attn
  return c.num_layers * (dense + attn)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--tiny", action="store_true", help="a tiny config, to try the script on a CPU")
  parser.add_argument("--iters", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--batch", default="1,2", help="comma-separated batch sizes (2 = prompt + negative prompt)")
  parser.add_argument("--prompt_tokens", type=int, default=120, help="real tokens; the rest is padding")
  args = parser.parse_args()

  config = tiny_umt5_config() if args.tiny else UMT5_XXL
  dtype = jnp.bfloat16
  t0 = time.perf_counter()
  params = jax.jit(functools.partial(init_params, config, param_dtype=dtype))(jax.random.key(0))
  jax.block_until_ready(params)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  n_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  print(json.dumps(dict(device=str(jax.devices()[0].device_kind), jax=jax.__version__, params=n_params,
                        param_gib=round(n_bytes / 2**30, 2), init_s=round(time.perf_counter() - t0, 1))))

  model = UMT5Encoder(config, dtype=dtype, param_dtype=dtype)
  encode = jax.jit(lambda p, ids, mask: model.apply({"params": p}, ids, mask))
  rng = np.random.default_rng(0)
  for batch in (int(b) for b in args.batch.split(",")):
    ids = rng.integers(2, config.vocab_size, (batch, TEXT_LEN)).astype(np.int32)
    mask = (np.arange(TEXT_LEN)[None] < args.prompt_tokens).repeat(batch, 0).astype(np.int32)
    ids, mask = jnp.asarray(np.where(mask > 0, ids, 0)), jnp.asarray(mask)
    t0 = time.perf_counter()
    compiled = encode.lower(params, ids, mask).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(args.warmup):
      out = compiled(params, ids, mask)
    out.block_until_ready()
    times = []
    for _ in range(args.iters):
      t0 = time.perf_counter()
      compiled(params, ids, mask).block_until_ready()
      times.append((time.perf_counter() - t0) * 1e3)
    finite = bool(jnp.isfinite(out.astype(jnp.float32)).all())
    median = statistics.median(times)
    print(json.dumps(dict(batch=batch, text_len=TEXT_LEN, dtype="bfloat16", median_ms=round(median, 2),
                          min_ms=round(min(times), 2), max_ms=round(max(times), 2), iters=args.iters,
                          compile_s=round(compile_s, 1), finite=finite,
                          tflops=round(batch * flops_per_prompt(config, TEXT_LEN) / median / 1e9, 1))))


if __name__ == "__main__":
  main()
