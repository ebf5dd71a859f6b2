"""Compile time of the Wan DiT forward against depth: scanned layers keep it flat.

  JAX_PLATFORMS=cpu python -m benchmarks.dit_compile_time

Lowers and compiles (does not run) one bf16 forward of a 3-latent-frame chunk at 832x480 (60x104
latents, 4680 tokens) with abstract parameters, for 2, 10 and 30 layers of the 1.3B width, and the
14B (40 layers). Prints a table of seconds.
"""
import dataclasses
import time

import jax
import jax.numpy as jnp

from hybrid_forcing_jax.config import WAN_1_3B, WAN_14B
from hybrid_forcing_jax.dit import AttentionLayout, WanDiT, param_shapes


def compile_seconds(config, frames=3, text_len=512, layout=AttentionLayout()):
  model = WanDiT(config)
  params = param_shapes(config)
  x = jax.ShapeDtypeStruct((1, frames, 60, 104, config.in_dim), jnp.bfloat16)
  t = jax.ShapeDtypeStruct((1, frames), jnp.float32)
  ctx = jax.ShapeDtypeStruct((1, text_len, config.text_dim), jnp.bfloat16)
  fn = jax.jit(lambda p, x, t, c: model.apply({"params": p}, x, t, c, layout=layout))
  start = time.perf_counter()
  fn.lower(params, x, t, ctx).compile()
  return time.perf_counter() - start


def main():
  rows = []
  for name, config in [("1.3B width, 2 layers", dataclasses.replace(WAN_1_3B, num_layers=2)),
                       ("1.3B width, 10 layers", dataclasses.replace(WAN_1_3B, num_layers=10)),
                       ("Wan 1.3B (30 layers)", WAN_1_3B),
                       ("Wan 14B (40 layers)", WAN_14B)]:
    rows.append((name, compile_seconds(config)))
  rows.append(("Wan 1.3B, block-causal 21 frames", compile_seconds(WAN_1_3B, frames=21,
                                                                   layout=AttentionLayout.block_causal(3))))
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}")
  print(f"{'model':36s} {'compile s':>10s}")
  for name, seconds in rows:
    print(f"{name:36s} {seconds:10.2f}")


if __name__ == "__main__":
  main()
