"""Generate a streaming video from a prompt and write it to an MP4 as it is made.

  python -m hybrid_forcing_jax.sample --prompt="a blue square bouncing"   # the shipped world model, CPU
  python -m hybrid_forcing_jax.sample --config=configs/hybrid.py --dit=ckpt/dit --vae=ckpt/vae \
      --text_encoder=ckpt/umt5 --tokenizer=Wan2.1-T2V-1.3B/google/umt5-xxl \
      --prompt="a fox in the snow" --seconds=60 --output=fox.mp4

Each chunk (3 latent frames = 12 video frames, 9 for the first) is decoded by the streaming VAE and
appended to the fragmented MP4 at once: the file can be watched while it grows, memory stays flat
however long the video, and Ctrl-C or a crash leaves a playable file of everything made so far.
`--seconds=inf` streams until interrupted. An existing output file is kept unless `--overwrite`; a run
stopped before its first frame writes no file. Exit statuses: hybrid_forcing_jax/cli.py.
"""
from __future__ import annotations

import importlib.util
import math
import os
import resource
import sys
import time
import warnings

from absl import flags
from ml_collections import config_flags

from hybrid_forcing_jax import cli
from hybrid_forcing_jax.cli import BadInput


def _default_config() -> str | None:
  """configs/hybrid.py, found as the installed module `configs.hybrid` (editable or not)."""
  try:
    spec = importlib.util.find_spec("configs.hybrid")
  except ImportError:
    return None
  return spec.origin if spec else None


FLAGS = flags.FLAGS
cli.define_config_flag("config", _default_config(),
                       "Streaming setting: configs/hybrid.py (default) or configs/self_forcing.py", "sample")
flags.DEFINE_string("prompt", "a blue square bouncing", "The prompt (the shipped world model knows the world's "
                    "captions: docs/world.md)")
flags.DEFINE_string("prompts_file", None, "A file with one prompt per line: one video each (output_000.mp4, ...)")
flags.DEFINE_string("prompt_schedule", None, "Switch prompts mid-stream: 'SECONDS:PROMPT;SECONDS:PROMPT', "
                    "starting at 0, e.g. '0:a blue square bouncing;5:a red circle bouncing'")
flags.DEFINE_float("seconds", None, "Video length in seconds (16 fps); 'inf' streams until Ctrl-C")
flags.DEFINE_integer("num_frames", None, "Video length in frames (instead of --seconds)")
flags.DEFINE_integer("seed", 0, "Random seed")
flags.DEFINE_string("output", "sample.mp4", "Output MP4 path")
flags.DEFINE_boolean("overwrite", False, "Replace existing output files (once the first frame is ready)")
flags.DEFINE_integer("width", None, "Width in pixels, a multiple of 16 (default 832; the shipped world model: "
                     "the world's, 64)")
flags.DEFINE_integer("height", None, "Height in pixels, a multiple of 16 (default 480; the shipped world model: "
                     "the world's, 64)")
flags.DEFINE_string("dit", None, "Converted DiT folder (python -m convert --model=dit); none of --dit, --vae, "
                    "--text_encoder, --tokenizer: the world model shipped in hybrid_forcing_jax/world/model")
flags.DEFINE_string("vae", None, "Latent codec folder: a converted VAE (python -m convert --model=vae) or the "
                    "world's pixel codec (latent_codec.save_pixel_codec)")
flags.DEFINE_string("text_encoder", None, "Converted umT5 folder (python -m convert --model=t5), or the world's")
flags.DEFINE_string("tokenizer", None, "Local google/umt5-xxl tokenizer folder, or the world's word tokenizer folder")
flags.DEFINE_boolean("recache", True, "On a prompt switch, re-encode the cached window under the new prompt")
flags.DEFINE_boolean("precompile", None, "Compile the first chunk's DiT programs on a background thread while the text "
                     "encoder and the VAE load (pipeline.precompile_first_chunk). Default: on a GPU or TPU (an H200 "
                     "at full size: its first frame 8-12 s sooner), off on a CPU (2 cores: 3.8 -> 5.4 s, later)")
flags.DEFINE_enum("text_encoder_weights", "auto", ["auto", "host", "device"],
                  "Where the text encoder's weights stay between prompt changes: host (copied to the device a "
                  "layer at a time only to encode a prompt: umT5-XXL's 11 GB off the GPU, for a copy per new "
                  "prompt), device, or auto: host where the encoder would take more than a quarter of the GPU's "
                  "or TPU's memory (umT5-XXL on a 24 or 40 GB card), else device")
flags.DEFINE_integer("vae_frames_per_call", None, "Latent frames the Wan VAE decodes per call (default: a whole "
                     "chunk); 1 lowers peak GPU memory at 832x480 from 13.9 to 9.4 GiB for 6 ms more a chunk (H200, "
                     "docs/benchmarks.md), and frames are written as each latent frame is decoded. Set, the VAE's "
                     "full-resolution layers also run one video frame at a time (WanVAE tail_by_frame)")
flags.DEFINE_string("attention_backend", "auto", "Attention backend (auto, xla, cudnn, pallas_triton, pallas_mosaic)")
flags.DEFINE_string("compilation_cache_dir", os.path.join("~", ".cache", "hybrid_forcing_jax", "xla"),
                    "Persistent XLA compilation cache: later runs with the same model and sizes skip most "
                    "of the compilation before the first frame. Empty: no cache")

# ffmpeg is started with fork+exec after JAX's threads exist; exec follows at once, so the warning is moot.
warnings.filterwarnings("ignore", message="os.fork\\(\\) was called", category=RuntimeWarning)

FPS = 16   # Wan2.1's frame rate, and the world's (WorldConfig.fps)
DEFAULT_SECONDS = 2.0
MODEL_FLAGS = ("dit", "vae", "text_encoder", "tokenizer")


def parse_schedule(text: str) -> list[tuple[float, str]]:
  entries = []
  for part in text.split(";"):
    if not part.strip():
      continue
    seconds, sep, prompt = part.partition(":")
    try:
      at = float(seconds)
    except ValueError:
      raise BadInput(f"--prompt_schedule: {part!r} is not SECONDS:PROMPT") from None
    if not sep or not prompt.strip():
      raise BadInput(f"--prompt_schedule: empty prompt in {part!r}")
    entries.append((at, prompt.strip()))
  if not entries or entries[0][0] != 0 or any(b[0] <= a[0] for a, b in zip(entries, entries[1:])):
    raise BadInput("--prompt_schedule: times must start at 0 and increase")
  return entries


def requested_frames() -> float:
  if FLAGS.seconds is not None and FLAGS.num_frames is not None:
    raise BadInput("give --seconds or --num_frames, not both")
  if FLAGS.num_frames is not None:
    frames = FLAGS.num_frames
  else:
    seconds = DEFAULT_SECONDS if FLAGS.seconds is None else FLAGS.seconds
    frames = seconds * FPS if math.isfinite(seconds) else math.inf
  if not frames > 0:
    raise BadInput(f"the video length must be positive, got {frames} frames")
  return frames


def using_shipped_model() -> bool:
  return not any(getattr(FLAGS, k) for k in MODEL_FLAGS)


def check_size(shipped: bool) -> tuple[int, int]:
  """The flags' size, else the shipped model's (the world's videos it was trained on) or Wan's 832x480."""
  from hybrid_forcing_jax.world.scene import WorldConfig
  world = WorldConfig()
  width = FLAGS.width if FLAGS.width is not None else (world.width if shipped else 832)
  height = FLAGS.height if FLAGS.height is not None else (world.height if shipped else 480)
  for name, size in (("width", width), ("height", height)):
    if size <= 0 or size % 16:
      raise BadInput(f"--{name}={size} must be a positive multiple of 16")
  return width, height


def stream_config():
  from hybrid_forcing_jax.streaming.config import from_config
  if FLAGS.config is None:
    raise BadInput("the default config `configs.hybrid` is not importable (another package named 'configs' "
                   "comes first?); pass --config=PATH")
  if "stream" not in FLAGS.config:
    raise BadInput(f"--config={config_flags.get_config_filename(FLAGS['config'])} has no 'stream' section")
  try:
    return from_config(FLAGS.config.stream)
  except (TypeError, ValueError) as e:
    raise BadInput(f"--config: stream: {e}") from None


def build_pipeline(stream, size: tuple[int, int]):
  """The model of the four folder flags, or with none of them the shipped world model: one loader. size:
  (height, width) of the videos, for --precompile."""
  from hybrid_forcing_jax import pipeline
  given = {k: getattr(FLAGS, k) for k in MODEL_FLAGS}
  shipped = using_shipped_model()
  if not shipped:
    missing = [f"--{k}" for k, v in given.items() if not v]
    if missing:
      raise BadInput(f"a trained model needs --dit, --vae, --text_encoder and --tokenizer; missing {missing}")
    for key in MODEL_FLAGS:
      if not os.path.isdir(given[key]):
        raise BadInput(f"--{key}={given[key]!r} is not a folder")
  if FLAGS.vae_frames_per_call is not None and FLAGS.vae_frames_per_call < 1:
    raise BadInput(f"--vae_frames_per_call={FLAGS.vae_frames_per_call} must be >= 1")
  folders = pipeline.model_folders(pipeline.SHIPPED_MODEL) if shipped else given
  precompile = pipeline.precompile_by_default() if FLAGS.precompile is None else FLAGS.precompile
  try:
    on_host = {"auto": None, "host": True, "device": False}[FLAGS.text_encoder_weights]
    return pipeline.from_checkpoints(stream, attention_backend=FLAGS.attention_backend,
                                     text_weights_on_host=on_host, vae_frames_per_call=FLAGS.vae_frames_per_call,
                                     precompile_size=size if precompile else None, **folders)
  except (ValueError, FileNotFoundError, OSError) as e:
    if shipped:   # not the user's input: the installation lacks it
      raise cli.RunFailed(f"the shipped model {pipeline.SHIPPED_MODEL} is missing or incomplete (a checkout "
                          f"without it?): {e}; or give --dit, --vae, --text_encoder and --tokenizer") from None
    raise BadInput(f"cannot load the model: {e}") from None


def prompts_to_run() -> list[tuple[str, list[tuple[float, str]]]]:
  """(output path, schedule in seconds) per video."""
  if FLAGS.prompts_file and FLAGS.prompt_schedule:
    raise BadInput("--prompts_file and --prompt_schedule cannot be combined")
  if FLAGS.prompt_schedule:
    return [(FLAGS.output, parse_schedule(FLAGS.prompt_schedule))]
  if FLAGS.prompts_file:
    try:
      with open(FLAGS.prompts_file) as f:
        lines = [line.strip() for line in f if line.strip()]
    except OSError as e:
      raise BadInput(f"--prompts_file: {e}") from None
    if not lines:
      raise BadInput(f"--prompts_file {FLAGS.prompts_file!r} holds no prompt")
    stem, ext = os.path.splitext(FLAGS.output)
    return [(f"{stem}_{i:03d}{ext or '.mp4'}", [(0.0, p)]) for i, p in enumerate(lines)]
  if not FLAGS.prompt.strip():
    raise BadInput("--prompt is empty")
  return [(FLAGS.output, [(0.0, FLAGS.prompt.strip())])]


def generate(pipe, path: str, schedule, total_frames: float, width: int, height: int, *, seed: int = 0,
             recache: bool = True, overwrite: bool = False) -> dict:
  """Stream one video into the MP4 at `path`; returns its summary (frames, wall time, FPS, ...). Ctrl-C
  ends it early (`interrupted`); with no frame made by then, no file is written."""
  from tqdm import tqdm

  from hybrid_forcing_jax.video_writer import Mp4Writer
  chunk_schedule = [(_chunk_at(pipe, seconds), prompt) for seconds, prompt in schedule]
  switches = {chunk: prompt for chunk, prompt in chunk_schedule if chunk > 0}
  chunks = None if math.isinf(total_frames) else pipe.chunks_for(int(total_frames))
  writer = Mp4Writer(path, width, height, FPS, overwrite=overwrite)
  start = time.perf_counter()
  first_frame_s, first_frames = None, 0
  bar = tqdm(total=chunks, unit="chunk", desc=os.path.basename(path), dynamic_ncols=True)
  interrupted = False
  last_index = -1
  try:
    # One item per chunk, or per piece of a chunk (--vae_frames_per_call): the bar counts chunks.
    for index, frames in pipe.frames(chunk_schedule, height=height, width=width, seed=seed, recache=recache,
                                     num_chunks=chunks):
      cli.check_interrupted()
      new_chunk, last_index = index != last_index, index
      if new_chunk and index in switches:
        tqdm.write(f"prompt switch at {pipe.chunk_start_frame(index) / FPS:.2f} s of video: {switches[index]!r}",
                   file=sys.stderr)
      keep = frames[: int(min(len(frames), total_frames - writer.frames))]
      writer.append(keep)
      if first_frame_s is None:
        # The first chunk carries the compilation: the running FPS counts from its end.
        first_frame_s, first_frames = time.perf_counter() - start, writer.frames
      since_first = time.perf_counter() - start - first_frame_s
      fps = (writer.frames - first_frames) / since_first if since_first > 0 else 0.0
      bar.set_postfix(frames=writer.frames, fps=f"{fps:.1f}")
      bar.update(int(new_chunk))
  except KeyboardInterrupt:
    interrupted = True
  finally:
    bar.close()
    writer.close()
  wall = time.perf_counter() - start
  later = wall - first_frame_s if first_frame_s is not None else 0.0
  return dict(path=path, frames=writer.frames, video_s=writer.frames / FPS, wall_s=wall,
              fps=writer.frames / wall if wall else 0.0, first_frame_s=first_frame_s, interrupted=interrupted,
              fps_after_first=(writer.frames - first_frames) / later if later > 0 else None)


def check_output(path: str) -> None:
  from hybrid_forcing_jax.video_writer import check_output_path
  try:
    check_output_path(path, overwrite=FLAGS.overwrite)
  except ValueError as e:
    raise BadInput(f"--output: {e}") from None


def _chunk_at(pipe, seconds: float) -> int:
  """The first chunk whose first frame is at or after `seconds`."""
  frame, index = seconds * FPS, 0
  while pipe.chunk_start_frame(index) < frame:
    index += 1
  return index


def use_compilation_cache(folder: str) -> None:
  if not folder:
    return
  import jax
  folder = os.path.expanduser(folder)
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise BadInput(f"--compilation_cache_dir={folder!r} cannot be created: {e}") from None
  jax.config.update("jax_compilation_cache_dir", folder)
  # Every program, not only those compiling for over a second (jax's default): a start runs dozens of small
  # ones (prompt, VAE pieces, state updates), and together they were a third of a warm start's time.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def peak_memory_summary() -> str:
  import jax
  host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  stats = jax.devices()[0].memory_stats() or {}
  device = stats.get("peak_bytes_in_use")
  return f"peak host memory {host:.2f} GiB" + (f", peak device memory {device / 2**30:.2f} GiB" if device else "")


def summary_line(summary: dict, width: int, height: int) -> str:
  if not summary["frames"]:
    return f"interrupted before the first frame of {summary['path']}: no file written"
  note = " (interrupted)" if summary["interrupted"] else ""
  after_first = summary["fps_after_first"]
  return (f"wrote {summary['path']}{note}: {summary['frames']} frames = {summary['video_s']:.2f} s of video "
          f"at {width}x{height}, wall {summary['wall_s']:.1f} s ({summary['fps']:.1f} FPS), first frame after "
          f"{summary['first_frame_s'] or 0:.2f} s (compilation included)"
          + (f", {after_first:.1f} FPS after it" if after_first else "") + f"; {peak_memory_summary()}")


def main(argv) -> int:
  total_frames = requested_frames()
  videos = prompts_to_run()
  shipped = using_shipped_model()
  width, height = check_size(shipped)
  for path, _ in videos:
    check_output(path)
  stream = stream_config()
  path = videos[0][0]
  try:
    use_compilation_cache(FLAGS.compilation_cache_dir)
    pipe = build_pipeline(stream, (height, width))
    cli.check_interrupted()
    if shipped:
      from hybrid_forcing_jax.pipeline import SHIPPED_MODEL
      print(f"no checkpoints given (--dit/--vae/--text_encoder/--tokenizer): streaming the world model shipped in "
            f"{SHIPPED_MODEL}; it knows the world's captions (docs/world.md)", file=sys.stderr)
    for path, schedule in videos:
      try:
        summary = generate(pipe, path, schedule, total_frames, width, height, seed=FLAGS.seed,
                           recache=FLAGS.recache, overwrite=FLAGS.overwrite)
      except OSError as e:   # the MP4 could not be written (ffmpeg's reason, a full disk)
        raise cli.RunFailed(str(e)) from None
      print(summary_line(summary, width, height), file=sys.stdout if summary["frames"] else sys.stderr)
      if summary["interrupted"]:
        return cli.EXIT_INTERRUPTED
  except KeyboardInterrupt:   # before generate's own handling: loading, compiling, opening the file
    print(f"interrupted before the first frame of {path}: no file written", file=sys.stderr)
    return cli.EXIT_INTERRUPTED
  return cli.EXIT_OK


if __name__ == "__main__":
  cli.run(main, "sample")
