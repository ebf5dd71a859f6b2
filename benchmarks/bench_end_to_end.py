"""End-to-end streaming speed: prompt -> umT5 -> streaming DiT -> streaming VAE decode -> uint8 frames
on the host, through `StreamingPipeline.frames`, the code path of `python -m hybrid_forcing_jax.sample`
(and, with --mp4, its MP4 writer too). Full size: umT5-XXL, Wan2.1-1.3B, the
Wan2.1 VAE, 832x480, random bf16 weights made on the device, batch 1.

  PYTHONUNBUFFERED=1 python -m benchmarks.bench_end_to_end [--setting=both|hybrid|self_forcing]
      [--text_encoder_weights=host|device|both] [--chunks=20] [--sparse_backend=auto] [--mp4=/tmp/bench.mp4] [--tiny]
      [--vae_frames_per_call=1] [--vae_tail_by_frame=auto|on|off]

`--text_encoder_weights`: where umT5's weights stay between prompts: host (sample's default where they would
take over a quarter of the GPU's memory; copied to the device a layer at a time for each new prompt,
text_encoder.HostResidentEncoder) or device.
Peak GPU memory with each, over a 60-chunk stream, in one call (issue 14):

  PYTHONUNBUFFERED=1 python -m benchmarks.bench_end_to_end --setting=hybrid --text_encoder_weights=both --chunks=60

Each setting and weights' place runs in its own process (clean peak-memory counter) and prints one JSON line:
  compile_s        the warm-up stream (every executable compiled; one serves the whole video)
  first_frame_s    a new prompt given -> its first frames on the host: prompt encoding, cross-attention
                   K/V, 4 denoising forwards and the VAE decode of the first chunk (after compilation);
                   with --vae_frames_per_call=1 only the chunk's first latent frame is decoded by then
  first_frames     how many frames that was (9, or 1 with --vae_frames_per_call=1)
  chunk_ms_*       steady state (window full): time between consecutive chunks reaching the host
  fps              video frames / wall time over the steady chunks (12 frames per chunk)
  dit_ms, vae_ms   the parts alone: DiT denoise + cache write per chunk; VAE decode of a 12-frame chunk
  first_frame_parts_ms  the first frame's path one synced step at a time (vae_decode_first_piece: the first
                   piece the pipeline decodes, first_frames frames)
  fps_with_mp4     with `--mp4=PATH`: the same stream also encoded into an MP4 (ffmpeg, libx264), the
                   last chunk counted when the file is complete, as the sample command does
  peak_gib         peak GPU memory of the process (umT5-XXL's 11 GB of weights included when on the device)
  peak_gib_after_chunks  the peak after the warm-up stream and after the timed one, by their chunk
                   counts: equal when the stream's memory stays flat
  memory_gib       weights_held: GPU memory in use once every model is built (the weights resident on the
                   device); peak_making_weights: the peak until then (making the random weights): what the
                   stream adds to the weights is peak_gib - weights_held
`--tiny` runs the world model shipped in the package (64x64) instead, to try the script on a CPU.
`--weights_dir=DIR` (full size, one --setting) reads the weights from converted folders in DIR with `sample`'s
loaders (dit/, codec/, text/text_encoder/; the storage dtypes of the converters), writing random ones there first
where missing (~14 GB, once, untimed under --cold_start): real converted weights can be timed the same way.

Cold start (issue 14: <= 60 s from an empty compilation cache, <= 10 s with it filled):

  PYTHONUNBUFFERED=1 python -m benchmarks.bench_end_to_end --setting=hybrid --cold_start [--text_encoder_weights=device]

starts the setting twice, each in a fresh process sharing one new, empty persistent compilation cache (as
`sample --compilation_cache_dir` keeps one), streams one prompt and stops at its first frame. Each prints:
  start_to_first_frame_s  the process launched -> the first frame on the host (imports, weights, the
                   compilations the first frame needs, the first frame's own work)
  import_s, weights_s      of it: importing the modules; making the weights on the device (random), or with
                   --weights_dir reading them from disk as a real start does
  compile_log      where the compilations went (jax_log_compiles): per stage (trace, lower, compile: XLA's
                   compilation, or the read of its result from the persistent cache) the total seconds, the
                   number of programs and the slowest ones
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib

_IMPORTS_START = time.time()
import jax
import jax.numpy as jnp
import numpy as np

from hybrid_forcing_jax.checkpoint import CONFIG_FILE, expected_shapes, flatten, load_checkpoint, save_checkpoint
from hybrid_forcing_jax.config import WAN_1_3B, WanConfig
from hybrid_forcing_jax.dit import WanDiT
from hybrid_forcing_jax.dit import init_params as init_dit_params
from hybrid_forcing_jax.latent_codec import load_latent_codec
from hybrid_forcing_jax.models import get_model_kind
from hybrid_forcing_jax.pipeline import (SHIPPED_MODEL, StreamingPipeline, from_checkpoints, model_folders,
                                         precompile_by_default, precompile_first_chunk, to_uint8)
from hybrid_forcing_jax.streaming.config import from_config
from hybrid_forcing_jax.streaming.sampler import jitted_phases, start
from hybrid_forcing_jax.text_encoder import TEXT_LEN, UMT5_XXL, TextEncoder, UMT5Config
from hybrid_forcing_jax.text_encoder import init_params as init_t5_params
from hybrid_forcing_jax.vae import WAN21_VAE, VaeConfig, WanVAE
from hybrid_forcing_jax.vae import init_params as init_vae_params
from hybrid_forcing_jax.world.scene import WorldConfig

FULL_SIZE = (480, 832)   # (height, width) of the full-size videos


def host_t5_params(config, key):
  """Random umT5 weights as NumPy arrays, made on the device one layer at a time: all of umT5-XXL at
  once would put its 11 GB on the device and set the peak that the host-resident encoder avoids."""
  init = functools.partial(init_t5_params, param_dtype=jnp.bfloat16)
  one_layer = dataclasses.replace(config, num_layers=1)
  rest = jax.device_get(jax.jit(lambda k: {n: p for n, p in init(one_layer, k).items() if n != "blocks"})(key))
  layer = jax.jit(lambda k: init(one_layer, k)["blocks"])
  blocks = [jax.device_get(layer(jax.random.fold_in(key, i))) for i in range(config.num_layers)]
  return dict(rest, blocks=jax.tree.map(lambda *layers: np.concatenate(layers), *blocks))


def setting_dit(stream) -> WanConfig:
  """The full-size DiT of a setting: Wan2.1-1.3B, with linear_proj where the stream has a linear memory."""
  return dataclasses.replace(WAN_1_3B, linear_proj=stream.linear)


def write_random_weights(folder: str, wan: WanConfig, t5: UMT5Config, vae: VaeConfig) -> None:
  """--weights_dir: random weights written as converted folders in the exported-model layout that `sample`
  reads (pipeline.model_folders: dit/, codec/ (here the Wan VAE), text/text_encoder/), in the storage dtypes
  the converters write (bf16 matmul weights, fp32 norms and modulation). A folder already there is kept."""
  paths = model_folders(folder)
  makers = {"text_encoder": ("umt5", t5, lambda: host_t5_params(t5, jax.random.key(1))),
            "dit": ("wan_dit", wan, lambda: jax.jit(functools.partial(init_dit_params, wan, param_dtype=jnp.bfloat16))(
                jax.random.key(0))),
            "vae": ("wan_vae", vae, lambda: init_vae_params(vae, 0))}
  for part, (kind, config, make) in makers.items():
    if os.path.exists(os.path.join(paths[part], CONFIG_FILE)):
      continue
    storage = expected_shapes(get_model_kind(kind), config)
    flat = {name: np.asarray(jax.device_get(x)).astype(storage[name].dtype) for name, x in flatten(make()).items()}
    save_checkpoint(paths[part], kind, config, flat)


def full_size_pipeline(cfg, text_weights_on_host: bool, vae_frames_per_call: int | None = None,
                       precompile: bool = False, weights_dir: str | None = None,
                       vae_tail_by_frame: bool | None = None) -> StreamingPipeline:
  """Wan2.1-1.3B + Wan VAE + umT5-XXL with random bf16 weights, made on the device or (weights_dir) read from
  the converted folders there as `sample` reads them (written first by write_random_weights where missing).
  Prompts become fixed pseudo-random token ids (no tokenizer files here); the encoder runs all 512 positions
  whatever the prompt. precompile: as `sample --precompile`, the first chunk's programs start compiling once the
  DiT's weights are there (before the text encoder's)."""
  bf16 = jnp.bfloat16
  wan = setting_dit(cfg)
  text_shape = jax.ShapeDtypeStruct((1, TEXT_LEN, UMT5_XXL.dim), bf16)
  latent_hw = (FULL_SIZE[0] // WAN21_VAE.spatial_factor, FULL_SIZE[1] // WAN21_VAE.spatial_factor)
  model = WanDiT(wan, dtype=bf16, param_dtype=bf16, attention_backend="auto")
  if weights_dir:
    write_random_weights(weights_dir, wan, UMT5_XXL, WAN21_VAE)
    paths = model_folders(weights_dir)
    _, dit_params = load_checkpoint(paths["dit"], "wan_dit", expected_config=wan)
    vae, vae_params = load_latent_codec(paths["vae"], decode_frames_per_call=vae_frames_per_call,
                                        tail_by_frame=vae_tail_by_frame)
    precompiled = precompile_first_chunk(model, dit_params, cfg, text_shape, latent_hw) if precompile else {}
    encoder = TextEncoder.from_checkpoint(paths["text_encoder"], dtype=bf16, weights_on_host=text_weights_on_host)
  else:
    if text_weights_on_host:   # before the DiT: the layer-by-layer making's transient memory comes first
      t5_params = host_t5_params(UMT5_XXL, jax.random.key(1))
    else:
      t5_params = jax.jit(functools.partial(init_t5_params, UMT5_XXL, param_dtype=bf16))(jax.random.key(1))
    encoder = TextEncoder(UMT5_XXL, t5_params, dtype=bf16, weights_on_host=text_weights_on_host)
    del t5_params   # the host-resident encoder made its own (pinned) copy: the NumPy one can go
    dit_params = jax.jit(functools.partial(init_dit_params, wan, param_dtype=bf16))(jax.random.key(0))
    vae = WanVAE(WAN21_VAE, decode_frames_per_call=vae_frames_per_call, tail_by_frame=vae_tail_by_frame)
    vae_params = init_vae_params(WAN21_VAE, 0)
    precompiled = precompile_first_chunk(model, dit_params, cfg, text_shape, latent_hw) if precompile else {}

  def embed(prompts):
    ids = np.zeros((len(prompts), encoder.text_len), np.int32)
    mask = np.zeros_like(ids)
    for i, p in enumerate(prompts):
      tokens = np.random.default_rng(zlib.crc32(p.encode())).integers(2, UMT5_XXL.vocab_size, 80)
      ids[i, :80], mask[i, :80] = tokens, 1
    return encoder.encode_ids(ids, mask)

  return StreamingPipeline(model, dit_params, cfg, vae, vae_params, embed, precompiled)


def stream_stamps(pipe: StreamingPipeline, prompt: str, num_chunks: int, hw, mp4: str | None = None):
  """-> (first, chunks): `first` = (seconds since the prompt was given, frames) when the first frames reach
  the host (the first piece of the first chunk when the VAE decodes in pieces); `chunks` = the same for each
  chunk's last frames, with the chunk's frame count. With `mp4`, each piece is also appended to that file
  as `python -m hybrid_forcing_jax.sample` does, and a last (seconds, 0) stamp marks the file complete."""
  writer = None
  if mp4:
    from hybrid_forcing_jax.video_writer import Mp4Writer
    writer = Mp4Writer(mp4, hw[1], hw[0], fps=16, overwrite=True)   # a scratch file, one per setting
  t0 = time.perf_counter()
  first, chunks = None, {}
  for index, frames in pipe.frames([(0, prompt)], height=hw[0], width=hw[1], seed=0, num_chunks=num_chunks):
    if writer:
      writer.append(frames)
    now = time.perf_counter() - t0
    first = first or (now, len(frames))
    chunks[index] = (now, chunks.get(index, (0.0, 0))[1] + len(frames))
  stamps = list(chunks.values())
  if writer:
    writer.close()
    stamps.append((time.perf_counter() - t0, 0))   # every frame encoded and in the file
  return first, stamps


def steady_fps(stamps, warm: int) -> float:
  steady = stamps[warm:]
  return sum(f for _, f in steady[1:]) / (steady[-1][0] - steady[0][0])


def median_ms(fn, iters):
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append((time.perf_counter() - t0) * 1e3)
  return statistics.median(times)


def parts_ms(pipe: StreamingPipeline, hw, warm_chunks: int, iters: int = 5):
  """DiT alone (denoise + cache write, per chunk, steady state), the VAE decode alone, and whether
  both produced finite numbers."""
  sf = pipe.vae.config.spatial_factor
  latent_hw = (hw[0] // sf, hw[1] // sf)
  ctx = pipe.embed(["parts"])
  state = start(pipe.dit, pipe.dit_params, pipe.stream, ctx, jax.random.key(3), latent_hw)
  denoise, write = jitted_phases(pipe.dit, pipe.stream)
  for _ in range(warm_chunks):
    clean = denoise(pipe.dit_params, state)
    state = write(pipe.dit_params, state, clean)
  holder = {"state": state}

  def dit_chunk():
    c = denoise(pipe.dit_params, holder["state"])
    holder["state"] = write(pipe.dit_params, holder["state"], c)
    return c

  dit_ms = median_ms(dit_chunk, iters)
  finite = bool(jnp.isfinite(dit_chunk()).all())
  z = jnp.zeros((1, pipe.stream.chunk_frames) + latent_hw + (pipe.vae.config.z_dim,), pipe.vae.options.dtype)
  _, cache = pipe.vae.decode_chunk(pipe.vae_params, z)
  vae_holder = {"cache": cache}

  def vae_chunk():
    video, vae_holder["cache"] = pipe.vae.decode_chunk(pipe.vae_params, z, vae_holder["cache"])
    return video

  finite &= bool(jnp.isfinite(vae_chunk()).all())
  return dit_ms, median_ms(vae_chunk, iters), finite


def first_frame_parts_ms(pipe: StreamingPipeline, hw) -> dict:
  """The first frame's path, one synced step at a time (what `first_frame_s` adds up)."""
  sf = pipe.vae.config.spatial_factor
  denoise, _ = jitted_phases(pipe.dit, pipe.stream)
  parts, t0 = {}, time.perf_counter()

  def lap(name, value):
    nonlocal t0
    jax.block_until_ready(value)
    parts[name] = round((time.perf_counter() - t0) * 1e3, 1)
    t0 = time.perf_counter()
    return value

  ctx = lap("text_encoder", pipe.embed(["first frame parts"]))
  state = lap("prompt_kv_and_state", start(pipe.dit, pipe.dit_params, pipe.stream, ctx, jax.random.key(4),
                                           (hw[0] // sf, hw[1] // sf)))
  clean = lap("denoise_4_steps", denoise(pipe.dit_params, state))
  # The first piece the pipeline decodes: the whole chunk (9 frames), or its first latent frame (1 frame).
  video, _ = lap("vae_decode_first_piece",
                 next(pipe.vae.decode_pieces(pipe.vae_params, clean.astype(pipe.vae.options.dtype))))
  lap("to_host", np.asarray(to_uint8(video)))
  return parts


def device_gib(stat: str = "peak_bytes_in_use") -> float:
  """A memory statistic of the first device (default: its peak) in GiB; 0 on the CPU."""
  stats = jax.devices()[0].memory_stats() or {}   # None on the CPU
  return round(stats.get(stat, 0) / 2**30, 2)


def make_pipeline(name: str, text_encoder_weights: str, args):
  """-> (the setting's pipeline, its frames' (height, width)): full size, or with --tiny the shipped model."""
  cfg = from_config(importlib.import_module(f"configs.{name}").get_config().stream)   # configs/<setting>.py
  if cfg.sparse_ratio is not None:
    cfg = dataclasses.replace(cfg, sparse_backend=args.sparse_backend)
  on_host = text_encoder_weights == "host"
  precompile = precompile_by_default() if args.precompile is None else args.precompile
  if args.tiny:   # the shipped model makes the world's frames
    hw = (WorldConfig().height, WorldConfig().width)
    return from_checkpoints(cfg, text_weights_on_host=on_host, precompile_size=hw if precompile else None,
                            **model_folders(SHIPPED_MODEL)), hw
  tail = {"auto": None, "on": True, "off": False}[args.vae_tail_by_frame]
  return full_size_pipeline(cfg, on_host, args.vae_frames_per_call, precompile, args.weights_dir, tail), FULL_SIZE


def run_setting(name: str, text_encoder_weights: str, args):
  pipe, hw = make_pipeline(name, text_encoder_weights, args)
  cfg = pipe.stream
  # Where the peak comes from: the weights alone (held, and the peak of making them), then each stream's.
  memory = {"weights_held": device_gib("bytes_in_use"), "peak_making_weights": device_gib()}
  warm = cfg.cache_slots // cfg.chunk_frames + 2   # chunks until the window is full
  t0 = time.perf_counter()
  stream_stamps(pipe, "compile everything", warm + 1, hw)
  compile_s = time.perf_counter() - t0
  peaks = {warm + 1: device_gib()}
  first, stamps = stream_stamps(pipe, "a red fox running through fresh snow", warm + args.chunks, hw)
  peaks[warm + args.chunks] = device_gib()
  steady = stamps[warm:]
  gaps = [(b[0] - a[0]) * 1e3 for a, b in zip(steady, steady[1:])]
  mp4_fps = None
  if args.mp4:
    mp4_fps = round(steady_fps(stream_stamps(pipe, "a fox, to a file", warm + args.chunks, hw, args.mp4)[1], warm), 2)
  dit_ms, vae_ms, finite = parts_ms(pipe, hw, warm)
  first_parts = first_frame_parts_ms(pipe, hw)
  print(json.dumps(dict(
      setting=name, text_encoder_weights=text_encoder_weights, vae_frames_per_call=args.vae_frames_per_call,
      vae_tail_by_frame=pipe.vae.options.tail_by_frame if isinstance(pipe.vae, WanVAE) else None,
      device=str(jax.devices()[0].device_kind),
      tiny=args.tiny, size=f"{hw[1]}x{hw[0]}",
      sparse_backend=cfg.sparse_backend if cfg.sparse_ratio else None, compile_s=round(compile_s, 1),
      first_frame_s=round(first[0], 3), first_frames=first[1], first_frame_parts_ms=first_parts, steady_chunks=len(gaps),
      chunk_ms_median=round(statistics.median(gaps), 1), chunk_ms_min=round(min(gaps), 1),
      chunk_ms_max=round(max(gaps), 1), fps=round(steady_fps(stamps, warm), 2), fps_with_mp4=mp4_fps,
      dit_ms=round(dit_ms, 1), vae_ms=round(vae_ms, 1),
      peak_gib=device_gib(), peak_gib_after_chunks=peaks, memory_gib=memory, finite=finite)), flush=True)


class CompileLog(logging.Handler):
  """jax's compile log (jax_log_compiles) -> seconds per program and stage: where a cold start's time goes."""
  PATTERN = re.compile(r"^Finished (tracing|jaxpr to MLIR module conversion|XLA compilation of) ?(.*?) "
                       r"(?:for jit )?in ([0-9.e-]+) sec")
  STAGES = {"tracing": "trace", "jaxpr to MLIR module conversion": "lower", "XLA compilation of": "compile"}

  def __init__(self):
    super().__init__()
    self.seconds: dict[str, dict[str, float]] = {}

  def emit(self, record):
    found = self.PATTERN.match(record.getMessage())
    if found:
      stage, program, seconds = self.STAGES[found[1]], found[2].removeprefix("jit(").removesuffix(")"), float(found[3])
      per_stage = self.seconds.setdefault(stage, {})
      per_stage[program] = per_stage.get(program, 0.0) + seconds

  def summary(self, top: int = 6) -> dict:
    """{stage: {"total_s", "programs", "top": {program: s}}} for trace, lower and compile (XLA's, or a read
    from the persistent cache)."""
    return {stage: dict(total_s=round(sum(p.values()), 1), programs=len(p),
                        top={k: round(v, 1) for k, v in sorted(p.items(), key=lambda kv: -kv[1])[:top]})
            for stage, p in self.seconds.items()}


def first_frame_only(name: str, text_encoder_weights: str, args):
  """One process of --cold_start: the pipeline made, one prompt streamed until its first frame; prints the
  wall-clock time of that frame for the parent to subtract its launch time from, and where the compilation
  time went (jax's compile log)."""
  imported = time.time()
  compile_log = CompileLog()
  jax.config.update("jax_log_compiles", True)
  logging.getLogger("jax").addHandler(compile_log)
  logging.getLogger("jax").propagate = False   # the summary is printed, not every line
  from hybrid_forcing_jax.sample import use_compilation_cache   # sample's own setting of the cache
  use_compilation_cache(args.compilation_cache_dir)
  pipe, hw = make_pipeline(name, text_encoder_weights, args)
  jax.block_until_ready((pipe.dit_params, pipe.vae_params))
  made = time.time()
  # An unbounded stream, as `sample` runs one (a stream of one chunk would never compile its cache write).
  for _ in pipe.frames([(0, "a red fox running through fresh snow")], height=hw[0], width=hw[1], seed=0):
    break   # the first frames are on the host
  print(json.dumps(dict(first_frame_at=time.time(), import_s=round(imported - _IMPORTS_START, 1),
                        weights_s=round(made - imported, 1), device=str(jax.devices()[0].device_kind),
                        compile_log=compile_log.summary())), flush=True)


def child_command(name: str, text_encoder_weights: str, args, *extra: str) -> list[str]:
  """This script for one setting and weights' place in a process of its own, with the flags that shape the
  pipeline passed on, and `extra`."""
  cmd = [sys.executable, "-m", "benchmarks.bench_end_to_end", f"--setting={name}",
         f"--text_encoder_weights={text_encoder_weights}", f"--sparse_backend={args.sparse_backend}", *extra]
  if args.tiny:
    cmd.append("--tiny")
  if args.vae_frames_per_call:
    cmd.append(f"--vae_frames_per_call={args.vae_frames_per_call}")
  cmd.append(f"--vae_tail_by_frame={args.vae_tail_by_frame}")
  if args.precompile is not None:
    cmd.append("--precompile" if args.precompile else "--no-precompile")
  if args.weights_dir:
    cmd.append(f"--weights_dir={args.weights_dir}")
  return cmd


def cold_start(name: str, text_encoder_weights: str, args) -> None:
  """Two fresh processes of first_frame_only sharing one new, empty compilation cache: cold, then warm.
  This process itself never touches a device (it would hold GPU memory the children need)."""
  if args.weights_dir:   # written before the timed starts, which read them
    subprocess.run(child_command(name, text_encoder_weights, args, "--write_weights_only"), check=True)
  cache = tempfile.mkdtemp(prefix="bench_cold_start_")
  try:
    for run in ("empty cache", "filled cache"):
      cmd = child_command(name, text_encoder_weights, args, "--first_frame_only", f"--compilation_cache_dir={cache}")
      launched = time.time()
      done = subprocess.run(cmd, capture_output=True, text=True, check=False)
      lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
      if done.returncode or not lines:
        raise SystemExit(f"cold start ({run}) failed with exit {done.returncode}:\n{done.stderr[-3000:]}")
      child = json.loads(lines[-1])
      print(json.dumps(dict(
          setting=name, text_encoder_weights=text_encoder_weights, vae_frames_per_call=args.vae_frames_per_call,
          device=child["device"], tiny=args.tiny, run=run,
          start_to_first_frame_s=round(child["first_frame_at"] - launched, 1), import_s=child["import_s"],
          weights_s=child["weights_s"], cache_files=len(os.listdir(cache)), compile_log=child["compile_log"])), flush=True)
  finally:
    shutil.rmtree(cache, ignore_errors=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--setting", default="both", choices=("both", "hybrid", "self_forcing"))
  parser.add_argument("--text_encoder_weights", default="host", choices=("host", "device", "both"),
                      help="where umT5's weights stay between prompts")
  parser.add_argument("--chunks", type=int, default=20, help="steady-state chunks timed")
  parser.add_argument("--sparse_backend", default="auto")
  parser.add_argument("--vae_frames_per_call", type=int, default=None,
                      help="latent frames per VAE decode call, full size only (WanVAE decode_frames_per_call; default: the chunk)")
  parser.add_argument("--vae_tail_by_frame", default="auto", choices=("auto", "on", "off"),
                      help="the VAE's full-resolution layers one video frame at a time (WanVAE tail_by_frame; auto: "
                           "with --vae_frames_per_call)")
  parser.add_argument("--tiny", action="store_true", help="the shipped world model, to try the script on a CPU")
  parser.add_argument("--precompile", action=argparse.BooleanOptionalAction, default=None,
                      help="as sample --precompile: the first chunk's programs compile while the rest is made "
                           "(default as sample's: on a GPU or TPU, off on a CPU)")
  parser.add_argument("--mp4", default=None, help="also time a stream written to this MP4 (needs imageio-ffmpeg)")
  parser.add_argument("--cold_start", action="store_true",
                      help="time process start -> first frame, with an empty then a filled compilation cache")
  parser.add_argument("--weights_dir", default=None,
                      help="full size: read the weights from converted folders here (dit/, codec/, text/text_encoder/: "
                           "the layout `sample` reads), as a real start does; random ones are written there first "
                           "where missing (~14 GB). One --setting (the DiT there has that setting's linear_proj)")
  parser.add_argument("--first_frame_only", action="store_true", help=argparse.SUPPRESS)   # --cold_start's child
  parser.add_argument("--write_weights_only", action="store_true", help=argparse.SUPPRESS)   # --weights_dir's child
  parser.add_argument("--compilation_cache_dir", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  settings = ("hybrid", "self_forcing") if args.setting == "both" else (args.setting,)
  places = ("host", "device") if args.text_encoder_weights == "both" else (args.text_encoder_weights,)
  if args.weights_dir and (args.tiny or len(settings) > 1):
    parser.error("--weights_dir: full size and one --setting only (--tiny reads the shipped model; the folder's "
                 "DiT has one setting's linear_proj)")
  if args.write_weights_only:
    cfg = importlib.import_module(f"configs.{settings[0]}").get_config().stream
    write_random_weights(args.weights_dir, setting_dit(cfg), UMT5_XXL, WAN21_VAE)
    return
  if args.first_frame_only:
    first_frame_only(settings[0], places[0], args)
    return
  if args.cold_start:
    for name in settings:
      for place in places:
        cold_start(name, place, args)
    return
  if len(settings) * len(places) == 1:
    run_setting(settings[0], places[0], args)
    return
  for name in settings:
    for place in places:
      subprocess.run(child_command(name, place, args, f"--chunks={args.chunks}",
                                   *([f"--mp4={args.mp4}"] if args.mp4 else [])), check=False)


if __name__ == "__main__":
  main()
