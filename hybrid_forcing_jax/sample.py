"""Generate a streaming video from a prompt and write it to an MP4 as it is made.

  python -m hybrid_forcing_jax.sample                      # built-in tiny random model on the CPU
  python -m hybrid_forcing_jax.sample --config=configs/hybrid.py --dit=ckpt/dit --vae=ckpt/vae \
      --text_encoder=ckpt/umt5 --tokenizer=Wan2.1-T2V-1.3B/google/umt5-xxl \
      --prompt="a fox in the snow" --seconds=60 --output=fox.mp4

Each chunk (3 latent frames = 12 video frames, 9 for the first) is decoded by the streaming VAE and
appended to the fragmented MP4 at once: the file can be watched while it grows, memory stays flat
however long the video, and Ctrl-C or a crash leaves a playable file of everything made so far.
`--seconds=inf` streams until interrupted.
"""
from __future__ import annotations

import math
import os
import resource
import sys
import time
import warnings

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", os.path.join(os.path.dirname(__file__), "..", "configs", "hybrid.py"),
                                "Streaming setting: configs/hybrid.py or configs/self_forcing.py")
flags.DEFINE_string("prompt", "a red fox running through fresh snow, cinematic", "The prompt")
flags.DEFINE_string("prompts_file", None, "A file with one prompt per line: one video each (output_000.mp4, ...)")
flags.DEFINE_string("prompt_schedule", None, "Switch prompts mid-stream: 'SECONDS:PROMPT;SECONDS:PROMPT', "
                    "starting at 0, e.g. '0:a calm sea;10:a storm at sea'")
flags.DEFINE_float("seconds", None, "Video length in seconds (16 fps); 'inf' streams until Ctrl-C")
flags.DEFINE_integer("num_frames", None, "Video length in frames (instead of --seconds)")
flags.DEFINE_integer("seed", 0, "Random seed")
flags.DEFINE_string("output", "sample.mp4", "Output MP4 path")
flags.DEFINE_integer("width", None, "Width in pixels, a multiple of 16 (default 832; built-in model 128)")
flags.DEFINE_integer("height", None, "Height in pixels, a multiple of 16 (default 480; built-in model 128)")
flags.DEFINE_string("dit", None, "Converted DiT folder (python -m convert --model=dit)")
flags.DEFINE_string("vae", None, "Converted VAE folder (python -m convert --model=vae)")
flags.DEFINE_string("text_encoder", None, "Converted umT5 folder (python -m convert --model=t5)")
flags.DEFINE_string("tokenizer", None, "Local google/umt5-xxl tokenizer folder")
flags.DEFINE_boolean("recache", True, "On a prompt switch, re-encode the cached window under the new prompt")
flags.DEFINE_string("attention_backend", "auto", "Attention backend (auto, xla, cudnn, pallas_triton, pallas_mosaic)")
flags.DEFINE_string("compilation_cache_dir", os.path.join("~", ".cache", "hybrid_forcing_jax", "xla"),
                    "Persistent XLA compilation cache: later runs with the same model and sizes skip most "
                    "of the compilation before the first frame. Empty: no cache")

# ffmpeg is started with fork+exec after JAX's threads exist; exec follows at once, so the warning is moot.
warnings.filterwarnings("ignore", message="os.fork\\(\\) was called", category=RuntimeWarning)

FPS = 16
BUILTIN_SECONDS = 2.0


class UsageError(Exception):
  """Bad input: printed as one line, exit status 2."""


def parse_schedule(text: str) -> list[tuple[float, str]]:
  entries = []
  for part in text.split(";"):
    if not part.strip():
      continue
    seconds, sep, prompt = part.partition(":")
    try:
      at = float(seconds)
    except ValueError:
      raise UsageError(f"--prompt_schedule: {part!r} is not SECONDS:PROMPT") from None
    if not sep or not prompt.strip():
      raise UsageError(f"--prompt_schedule: empty prompt in {part!r}")
    entries.append((at, prompt.strip()))
  if not entries or entries[0][0] != 0 or any(b[0] <= a[0] for a, b in zip(entries, entries[1:])):
    raise UsageError("--prompt_schedule: times must start at 0 and increase")
  return entries


def requested_frames() -> float:
  if FLAGS.seconds is not None and FLAGS.num_frames is not None:
    raise UsageError("give --seconds or --num_frames, not both")
  if FLAGS.num_frames is not None:
    frames = FLAGS.num_frames
  else:
    seconds = BUILTIN_SECONDS if FLAGS.seconds is None else FLAGS.seconds
    frames = seconds * FPS if math.isfinite(seconds) else math.inf
  if not frames > 0:
    raise UsageError(f"the video length must be positive, got {frames} frames")
  return frames


def using_builtin_model() -> bool:
  return not any(getattr(FLAGS, k) for k in ("dit", "vae", "text_encoder", "tokenizer"))


def check_size(builtin: bool) -> tuple[int, int]:
  width = FLAGS.width if FLAGS.width is not None else (128 if builtin else 832)
  height = FLAGS.height if FLAGS.height is not None else (128 if builtin else 480)
  for name, size in (("width", width), ("height", height)):
    if size <= 0 or size % 16:
      raise UsageError(f"--{name}={size} must be a positive multiple of 16")
  return width, height


def build_pipeline():
  from hybrid_forcing_jax import pipeline
  from hybrid_forcing_jax.streaming.config import from_config
  stream = from_config(FLAGS.config.stream)
  given = {k: getattr(FLAGS, k) for k in ("dit", "vae", "text_encoder", "tokenizer")}
  if not any(given.values()):
    return pipeline.builtin_random(stream, FLAGS.seed)
  missing = [f"--{k}" for k, v in given.items() if not v]
  if missing:
    raise UsageError(f"a trained model needs --dit, --vae, --text_encoder and --tokenizer; missing {missing}")
  for key in ("dit", "vae", "text_encoder", "tokenizer"):
    if not os.path.isdir(given[key]):
      raise UsageError(f"--{key}={given[key]!r} is not a folder")
  try:
    return pipeline.from_checkpoints(stream, attention_backend=FLAGS.attention_backend, **given)
  except (ValueError, FileNotFoundError, OSError) as e:
    raise UsageError(f"cannot load the model: {e}") from None


def prompts_to_run() -> list[tuple[str, list[tuple[float, str]]]]:
  """(output path, schedule in seconds) per video."""
  if FLAGS.prompts_file and FLAGS.prompt_schedule:
    raise UsageError("--prompts_file and --prompt_schedule cannot be combined")
  if FLAGS.prompt_schedule:
    return [(FLAGS.output, parse_schedule(FLAGS.prompt_schedule))]
  if FLAGS.prompts_file:
    try:
      with open(FLAGS.prompts_file) as f:
        lines = [line.strip() for line in f if line.strip()]
    except OSError as e:
      raise UsageError(f"--prompts_file: {e}") from None
    if not lines:
      raise UsageError(f"--prompts_file {FLAGS.prompts_file!r} holds no prompt")
    stem, ext = os.path.splitext(FLAGS.output)
    return [(f"{stem}_{i:03d}{ext or '.mp4'}", [(0.0, p)]) for i, p in enumerate(lines)]
  if not FLAGS.prompt.strip():
    raise UsageError("--prompt is empty")
  return [(FLAGS.output, [(0.0, FLAGS.prompt.strip())])]


def generate(pipe, path: str, schedule, total_frames: float, width: int, height: int, *, seed: int = 0,
             recache: bool = True) -> dict:
  """Stream one video into the MP4 at `path`; returns its summary (frames, wall time, FPS, ...)."""
  from tqdm import tqdm

  from hybrid_forcing_jax.video_writer import Mp4Writer
  chunk_schedule = [(_chunk_at(pipe, seconds), prompt) for seconds, prompt in schedule]
  chunks = None if math.isinf(total_frames) else pipe.chunks_for(int(total_frames))
  writer = Mp4Writer(path, width, height, FPS)
  start = time.perf_counter()
  first_frame_s, first_frames = None, 0
  bar = tqdm(total=chunks, unit="chunk", desc=os.path.basename(path), dynamic_ncols=True)
  interrupted = False
  try:
    for _, frames in pipe.frames(chunk_schedule, height=height, width=width, seed=seed, recache=recache,
                                 num_chunks=chunks):
      keep = frames[: int(min(len(frames), total_frames - writer.frames))]
      writer.append(keep)
      if first_frame_s is None:
        # The first chunk carries the compilation: the running FPS counts from its end.
        first_frame_s, first_frames = time.perf_counter() - start, writer.frames
      since_first = time.perf_counter() - start - first_frame_s
      fps = (writer.frames - first_frames) / since_first if since_first > 0 else 0.0
      bar.set_postfix(frames=writer.frames, fps=f"{fps:.1f}")
      bar.update(1)
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


def check_writable(path: str) -> None:
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise UsageError(f"--output {path!r}: folder {folder!r} does not exist")
  if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
    raise UsageError(f"--output {path!r} cannot be written (permission denied)")


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
    raise UsageError(f"--compilation_cache_dir={folder!r} cannot be created: {e}") from None
  jax.config.update("jax_compilation_cache_dir", folder)


def peak_memory_summary() -> str:
  import jax
  host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  stats = jax.devices()[0].memory_stats() or {}
  device = stats.get("peak_bytes_in_use")
  return f"peak host memory {host:.2f} GiB" + (f", peak device memory {device / 2**30:.2f} GiB" if device else "")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  try:
    total_frames = requested_frames()
    videos = prompts_to_run()
    width, height = check_size(using_builtin_model())
    for path, _ in videos:
      check_writable(path)
    use_compilation_cache(FLAGS.compilation_cache_dir)
    pipe = build_pipeline()
    if pipe.random_weights:
      print("NOTE: no checkpoints given (--dit/--vae/--text_encoder/--tokenizer): running a tiny built-in model "
            "with RANDOM weights on this machine. The MP4 is real; its pictures are noise until you give a "
            "trained model (see README: Weights, Convert).", file=sys.stderr)
    for path, schedule in videos:
      try:
        summary = generate(pipe, path, schedule, total_frames, width, height, seed=FLAGS.seed,
                           recache=FLAGS.recache)
      except (ValueError, OSError) as e:
        raise UsageError(str(e)) from None
      note = " (interrupted)" if summary["interrupted"] else ""
      after_first = summary["fps_after_first"]
      print(f"wrote {summary['path']}{note}: {summary['frames']} frames = {summary['video_s']:.2f} s of video "
            f"at {width}x{height}, wall {summary['wall_s']:.1f} s ({summary['fps']:.1f} FPS), first frame after "
            f"{summary['first_frame_s'] or 0:.2f} s (compilation included)"
            + (f", {after_first:.1f} FPS after it" if after_first else "") + f"; {peak_memory_summary()}")
      if summary["interrupted"]:
        return 130
  except UsageError as e:
    print(f"sample: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
