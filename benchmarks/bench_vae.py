"""Wan2.1 VAE speed on one GPU: full size (832x480), random bf16 weights, channels-last.

  PYTHONUNBUFFERED=1 python benchmarks/bench_vae.py --out=$OUT [--budget_s=420]

Measures, medians of wall-clock runs around block_until_ready after warm-up:
  1. each decoder stage's 3x3x3 causal conv alone, one 12-frame chunk (3d / fold_in / fold_out), and
     the upsampling convs (repeat / subpixel), to see what bounds the decoder;
  2. the streaming decoder: steady-state ms per 3-latent-frame chunk (cache donated, one jitted step),
     the first chunk, for each conv layout; the whole 21-latent-frame decode;
  3. the encoder on an 81-frame 832x480 video (frames per second).
Prints a table as it goes and writes everything to $OUT/bench_vae.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from hybrid_forcing_jax import vae_layers as L  # noqa: E402
from hybrid_forcing_jax.vae import WAN21_VAE, WanVAE, decoder_layout, init_params, tiny_vae_config  # noqa: E402

LAT_H, LAT_W = 60, 104  # 480x832 / 8
CONFIG = WAN21_VAE
T0 = time.time()
RESULTS: dict = {}


def log(*a):
  print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def timeit(fn, n=10, warmup=2):
  for _ in range(warmup):
    jax.block_until_ready(fn())
  ts = []
  for _ in range(n):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    ts.append(time.perf_counter() - t)
  return 1e3 * statistics.median(ts), 1e3 * min(ts)


def decoder_chunk_flops(config, latent_frames=3, first=False):
  """Multiply-add FLOPs of one decoder chunk, counted from the architecture (XLA's cost analysis
  does not see inside cuDNN convolutions). Upsampling convs counted as 3x3 on the 2x input."""
  f, h, w = latent_frames, LAT_H, LAT_W
  mid = config.base_dim * config.dim_mult[-1]
  total = 2 * 27 * config.z_dim * mid * f * h * w

  def res(cin, cout):
    return 2 * 27 * (cin * cout + cout * cout) * f * h * w + (2 * cin * cout * f * h * w if cin != cout else 0)
  total += 2 * res(mid, mid) + 2 * f * h * w * 4 * mid * mid + 4 * f * (h * w) ** 2 * mid
  for _, kind, *dims in decoder_layout(config):
    if kind == "res":
      total += res(*dims)
      continue
    c = dims[0]
    if kind == "up3d":
      total += 2 * 3 * c * 2 * c * f * h * w
      f = 2 * f - 1 if first else 2 * f
    h, w = 2 * h, 2 * w
    total += 2 * 9 * c * (c // 2) * f * h * w
  return total + 2 * 27 * config.base_dim * 3 * f * h * w


def rand(key, shape, dtype=jnp.bfloat16):
  return jax.random.normal(jax.random.key(key), shape, jnp.float32).astype(dtype)


def conv_micro():
  """One 12-frame chunk's 3x3x3 conv at each stage (input = chunk + 2 cached frames)."""
  stages = [(3, 60, 104, 384), (6, 120, 208, 384), (12, 240, 416, 192), (12, 480, 832, 96)]
  out = {}
  for si, (t, h, w, c) in enumerate(stages):
    x, cache = rand(1, (1, t, h, w, c)), rand(2, (1, 2, h, w, c))
    p = {"weight": rand(3, (c, c, 3, 3, 3)) * (1 / np.sqrt(27 * c)), "bias": jnp.zeros((c,), jnp.float32)}
    flops = 2 * 27 * c * c * t * h * w
    for impl in ("3d", "fold_in", "fold_out"):
      opt = L.VaeOptions(conv_impl=impl)
      f = jax.jit(lambda p, x, cache, opt=opt: L.causal_conv3d(p, x, cache, opt)[0])
      ms, best = timeit(lambda: f(p, x, cache), n=10)
      out[f"stage{si}_{impl}"] = ms
      log(f"conv stage {si} {t}x{h}x{w}x{c} {impl:8s} {ms:7.2f} ms  {flops / ms / 1e9:6.0f} TFLOP/s")
  # Upsampling 2D convs (nearest 2x + 3x3): at the input of stages 1, 2, 3 of a steady chunk.
  ups = [(6, 60, 104, 384), (12, 120, 208, 384), (12, 240, 416, 192)]
  for si, (t, h, w, c) in enumerate(ups, start=1):
    x = rand(4, (1, t, h, w, c))
    p = {"weight": rand(5, (c // 2, c, 3, 3)) * (1 / np.sqrt(9 * c)), "bias": jnp.zeros((c // 2,), jnp.float32)}
    flops = 2 * 9 * c * (c // 2) * t * 4 * h * w
    for impl in ("repeat", "subpixel"):
      opt = L.VaeOptions(upsample_impl=impl)
      f = jax.jit(lambda p, x, opt=opt: L.upsample2d(p, x, opt))
      ms, _ = timeit(lambda: f(p, x), n=10)
      out[f"up{si}_{impl}"] = ms
      log(f"upsample into stage {si} {t}x{h}x{w}x{c} {impl:8s} {ms:7.2f} ms  {flops / ms / 1e9:6.0f} TFLOP/s (as 3x3 on 2x)")
  RESULTS["conv_micro_ms"] = out


def decoder(params, conv_impl, upsample_impl, full: bool, budget_end: float):
  key = f"{conv_impl}/{upsample_impl}"
  vae = WanVAE(CONFIG, conv_impl=conv_impl, upsample_impl=upsample_impl)
  z = rand(10, (1, 21, LAT_H, LAT_W, 16), jnp.float32)
  res = {}
  t = time.time()
  out0, cache = vae.decode_chunk(params, z[:, :3])
  jax.block_until_ready((out0, cache))
  res["first_chunk_compile_s"] = time.time() - t
  out1, cache = vae.decode_chunk(params, z[:, 3:6], cache)
  jax.block_until_ready((out1, cache))
  res["steady_compile_s"] = time.time() - t - res["first_chunk_compile_s"]
  assert out0.shape == (1, 9, 8 * LAT_H, 8 * LAT_W, 3) and out1.shape == (1, 12, 8 * LAT_H, 8 * LAT_W, 3), (out0.shape, out1.shape)
  assert bool(jnp.isfinite(out1.astype(jnp.float32)).all())
  state = {"cache": cache}
  zc = z[:, 6:9]

  def step():
    o, state["cache"] = vae.decode_chunk(params, zc, state["cache"])
    return o, state["cache"]

  res["steady_chunk_ms"], res["steady_chunk_min_ms"] = timeit(step, n=15, warmup=3)
  log(f"decoder {key:18s} steady chunk (12 frames) {res['steady_chunk_ms']:7.2f} ms "
      f"(min {res['steady_chunk_min_ms']:.2f}; compile first {res['first_chunk_compile_s']:.0f}s, "
      f"steady {res['steady_compile_s']:.0f}s)")
  if full:
    res["steady_chunk_flops"] = decoder_chunk_flops(CONFIG)
    log(f"  {res['steady_chunk_flops'] / 1e12:.1f} TFLOP per steady chunk -> "
        f"{res['steady_chunk_flops'] / res['steady_chunk_ms'] / 1e9:.0f} TFLOP/s")
    res["first_chunk_ms"], _ = timeit(lambda: vae.decode_chunk(params, z[:, :3]), n=10)
    log(f"  first chunk (9 frames) {res['first_chunk_ms']:.2f} ms")
    del state, cache
    if time.time() < budget_end - 60:
      # vae.decode streams 3-latent chunks here: in one call the 81-frame activations pass cuDNN's
      # 32-bit index limit (measured 2026-11-22: 101 s per call, 118 s to compile).
      out = vae.decode(params, z)
      assert out.shape == (1, 81, 8 * LAT_H, 8 * LAT_W, 3)
      res["whole_21_ms"], _ = timeit(lambda: vae.decode(params, z), n=3, warmup=1)
      log(f"  whole 21-latent decode (81 frames, vae.decode = 7 streamed chunks) {res['whole_21_ms']:.1f} ms")
  RESULTS.setdefault("decoder", {})[key] = res


def encoder(params, budget_end: float, conv_impl: str):
  vae = WanVAE(CONFIG, conv_impl=conv_impl)
  res = {}
  for frames, chunk in ((81, None),):
    if time.time() > budget_end - 40:
      log("skipping encoder", frames, chunk, "(time budget)")
      continue
    video = jnp.clip(rand(20, (1, frames, 8 * LAT_H, 8 * LAT_W, 3)), -1, 1)
    t = time.time()
    lat = vae.encode(params, video, chunk_frames=chunk)
    jax.block_until_ready(lat)
    compile_s = time.time() - t
    assert lat.shape == (1, 21, LAT_H, LAT_W, 16)
    ms, _ = timeit(lambda: vae.encode(params, video, chunk_frames=chunk), n=3, warmup=1)
    name = f"{frames}f_chunk{chunk}_{conv_impl}"
    res[name] = {"ms": ms, "frames_per_s": frames / ms * 1e3, "compile_s": compile_s}
    log(f"encoder {frames} frames 832x480 (chunk_frames={chunk}) {ms:.1f} ms = {frames / ms * 1e3:.0f} frames/s "
        f"(compile {compile_s:.0f}s)")
  RESULTS["encoder"] = res


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=os.environ.get("OUT", "."))
  ap.add_argument("--budget_s", type=float, default=420)
  ap.add_argument("--variants", default="3d/subpixel,3d/repeat,fold_in/subpixel,fold_out/subpixel",
                  help="decoder conv_impl/upsample_impl pairs; the first gets the full set of measurements")
  ap.add_argument("--skip_micro", action="store_true")
  ap.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny config, 32x48")
  args = ap.parse_args()
  budget_end = T0 + args.budget_s
  global CONFIG, LAT_H, LAT_W
  if args.tiny:
    CONFIG, LAT_H, LAT_W = tiny_vae_config(), 4, 6
  RESULTS["device"] = str(jax.devices()[0].device_kind)
  RESULTS["jax"] = jax.__version__
  RESULTS["xla_flags"] = os.environ.get("XLA_FLAGS", "")
  log("device", RESULTS["device"], "jax", jax.__version__)

  def save():
    with open(os.path.join(args.out, "bench_vae.json"), "w") as f:
      json.dump(RESULTS, f, indent=2)

  params = jax.device_put(init_params(CONFIG, seed=0, param_dtype=jnp.bfloat16))
  log("params on device")
  if not args.skip_micro:
    conv_micro()
    save()
  variants = [v.split("/") for v in args.variants.split(",")]
  decoder(params, *variants[0], full=True, budget_end=budget_end)
  save()
  encoder(params, budget_end, variants[0][0])
  save()
  for conv_impl, up in variants[1:]:
    if time.time() > budget_end - 45:
      log("skipping decoder variant", conv_impl, up, "(time budget)")
      continue
    decoder(params, conv_impl, up, full=False, budget_end=budget_end)
    save()
  log("done")
  save()


if __name__ == "__main__":
  main()
