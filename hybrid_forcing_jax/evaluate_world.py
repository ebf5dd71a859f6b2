"""Evaluate a world model with numbers: prompt following, long horizon and long memory (issue 12;
protocols in world/eval_tasks.py and docs/world.md), printed as tables. Paths below: the world
pipeline's (scripts/world_pipeline.sh).

  python -m hybrid_forcing_jax.evaluate_world --config=configs/world/hybrid.py --dit=runs/world/model/dit \
      --text=runs/world/model/text --codec=runs/world/model/codec --random --ground_truth
  python -m hybrid_forcing_jax.evaluate_world --config=configs/world/ode_init.py --teacher \
      --dit=runs/world/teacher/export/00010000 --text=data/world/text --codec=data/world/codec

Rows: the model of --dit (a streaming student with the config's `stream` section, or with --teacher a
bidirectional teacher sampled by many Euler steps with CFG); --random: the same architecture with
random weights (the floor); --ground_truth: the world's own videos (the measurements' ceiling: 1.0 where
they read back what the example says). --name names the --dit row (scripts/world_ablation.sh: the
ablation's row). The world is the `world` section (WorldConfig keys) of --world_config, else of --config,
else WorldConfig's defaults. Every value is in [0, 1]. Exit statuses: cli.py.
"""
from __future__ import annotations

import json
import os
import sys

from absl import flags

from hybrid_forcing_jax import cli
from hybrid_forcing_jax.cli import BadInput
from hybrid_forcing_jax.world import grammar
from hybrid_forcing_jax.world.scene import WorldConfig, long_memory_fits

FLAGS = flags.FLAGS
cli.define_config_flag("config", None, "Config with a `stream` section (configs/hybrid.py, configs/self_forcing.py, "
                       "a world config) and optionally a `world` section", "evaluate_world")
flags.DEFINE_string("dit", None, "DiT folder: the model to evaluate (a streaming student, or with --teacher the teacher)")
flags.DEFINE_string("name", None, "The --dit row's name in the tables and the JSON (default: the folder's name)")
cli.define_config_flag("world_config", None, "A config whose `world` section is the world to evaluate on (e.g. "
                       "configs/world/teacher.py:tiny, the world the teacher learnt); default: --config's", "evaluate_world")
flags.DEFINE_string("text", None, "World text folder (text_encoder/ and tokenizer/, world.text.save_world_text)")
flags.DEFINE_string("codec", None, "Latent codec folder (latent_codec.save_pixel_codec, or a converted VAE)")
flags.DEFINE_boolean("teacher", False, "--dit is a bidirectional teacher: sample with --teacher_steps Euler steps and CFG")
flags.DEFINE_boolean("random", False, "Add a row for --dit's architecture with random weights (the floor)")
flags.DEFINE_boolean("ground_truth", False, "Add a row for the world's own videos (validates the measurements)")
flags.DEFINE_list("tasks", ["prompt_following", "long_horizon", "long_memory"], "Which evaluations to run")
flags.DEFINE_enum("prompt_split", "heldout", ["heldout", "train"], "Captions of prompt following: held-out "
                  "combinations (generalisation) or the training distribution (was the world learnt at all)")
flags.DEFINE_integer("num_videos", 12, "Videos per evaluation (held-out captions: 12 distinct combinations)")
flags.DEFINE_integer("seed", 0, "Seed of the examples (world splits) and of the generators' noise")
flags.DEFINE_integer("batch_size", 12, "Videos generated at once")
flags.DEFINE_float("horizon_seconds", 60.0, "Long-horizon video length (60 s = 1 minute, > 10x the 5 s training length)")
flags.DEFINE_integer("teacher_steps", None, "Teacher Euler steps (default: the config's ode_pairs.num_steps, else 48)")
flags.DEFINE_float("teacher_shift", None, "Teacher schedule shift (default: the config's ode_pairs.shift, else 5)")
flags.DEFINE_float("guidance", None, "Teacher CFG scale (default: the config's ode_pairs.guidance, else 6)")
flags.DEFINE_string("negative_prompt", "", "The teacher's unconditional prompt")
flags.DEFINE_string("attention_backend", "auto", "Attention backend of the DiT (auto, xla, cudnn, pallas_triton, ...)")
flags.DEFINE_string("output_json", None, "Also write the results to this JSON file")
flags.DEFINE_string("videos_npz", None, "Also write prompt following's videos to this .npz, to look at: per row "
                    "'<row>/videos' uint8 [N, T, H, W, 3] and '<row>/captions'")

TEACHER_DEFAULTS = {"num_steps": 48, "shift": 5.0, "guidance": 6.0}   # configs/ode_init.py's ode_pairs


def stream_and_world():
  from hybrid_forcing_jax.streaming.config import from_config
  if FLAGS.config is None:
    raise BadInput("give --config (a config with a `stream` section, e.g. configs/hybrid.py)")
  if "stream" not in FLAGS.config:
    raise BadInput("--config has no 'stream' section")
  try:
    stream = from_config(FLAGS.config.stream)
  except (TypeError, ValueError) as e:
    raise BadInput(f"--config: stream: {e}") from None
  return stream, world_setting()


def world_setting() -> WorldConfig:
  """--world_config's `world` section, else --config's, else WorldConfig()."""
  flag = "world_config" if FLAGS.world_config is not None else "config"
  config = getattr(FLAGS, flag)
  if flag == "world_config" and "world" not in config:
    raise BadInput("--world_config has no 'world' section")
  try:
    return WorldConfig.from_dict(dict(config.world)) if "world" in config else WorldConfig()
  except (TypeError, ValueError) as e:
    raise BadInput(f"--{flag}: world: {e}") from None


def teacher_setting(key: str, flag):
  if flag is not None:
    return flag
  pairs = FLAGS.config.get("ode_pairs")
  return pairs[key] if pairs is not None and key in pairs else TEACHER_DEFAULTS[key]


def check_flags() -> None:
  if not FLAGS.dit and not FLAGS.ground_truth:
    raise BadInput("nothing to evaluate: give --dit (with --text and --codec) and/or --ground_truth")
  if FLAGS.dit:
    for name in ("dit", "text", "codec"):
      value = getattr(FLAGS, name)
      if not value:
        raise BadInput(f"--dit needs --text and --codec; missing --{name}")
      if not os.path.isdir(value):
        raise BadInput(f"--{name}={value!r} is not a folder")
  elif FLAGS.random or FLAGS.teacher:
    raise BadInput(f"--{'random' if FLAGS.random else 'teacher'} needs --dit (its architecture)")
  from hybrid_forcing_jax.world.eval_tasks import TASKS
  unknown = sorted(set(FLAGS.tasks) - set(TASKS))
  if unknown or not FLAGS.tasks:
    raise BadInput(f"--tasks: unknown {unknown}; choose from {list(TASKS)}")
  for name in ("num_videos", "batch_size"):
    if getattr(FLAGS, name) < 1:
      raise BadInput(f"--{name}={getattr(FLAGS, name)} must be >= 1")


def build_generators(stream) -> dict:
  """Row name -> generator."""
  from hybrid_forcing_jax.world.eval_generators import GroundTruth
  rows = {}
  if FLAGS.dit:
    import jax

    from hybrid_forcing_jax.dit import init_params
    model, params, codec, codec_params, embed = load_model()
    name = FLAGS.name or os.path.basename(os.path.normpath(FLAGS.dit))
    rows[name] = make_generator(model, params, stream, codec, codec_params, embed)
    if FLAGS.random:
      random_params = init_params(model.config, jax.random.key(FLAGS.seed))
      rows["random weights"] = make_generator(model, random_params, stream, codec, codec_params, embed)
  if FLAGS.ground_truth:
    rows["ground truth"] = GroundTruth()
  return rows


def load_model():
  from hybrid_forcing_jax.checkpoint import load_checkpoint
  from hybrid_forcing_jax.dit import WanDiT
  from hybrid_forcing_jax.latent_codec import load_latent_codec
  from hybrid_forcing_jax.world.text import load_world_text
  try:
    config, params = load_checkpoint(FLAGS.dit, "wan_dit")
    codec, codec_params = load_latent_codec(FLAGS.codec)
    encoder = load_world_text(FLAGS.text)
  except (ValueError, FileNotFoundError, OSError) as e:
    raise BadInput(f"cannot load the model: {e}") from None
  if codec.config.z_dim != config.in_dim:
    raise BadInput(f"--codec={FLAGS.codec!r} has {codec.config.z_dim} channels, the DiT expects {config.in_dim}")
  if encoder.config.dim != config.text_dim:
    raise BadInput(f"--text={FLAGS.text!r} has dim {encoder.config.dim}, the DiT expects text_dim {config.text_dim}")
  return WanDiT(config, attention_backend=FLAGS.attention_backend), params, codec, codec_params, encoder.encode


def make_generator(model, params, stream, codec, codec_params, embed):
  from hybrid_forcing_jax.world.eval_generators import StreamGenerator, TeacherGenerator
  if not FLAGS.teacher:
    return StreamGenerator(model, params, stream, codec, codec_params, embed)
  return TeacherGenerator(model, params, codec, codec_params, embed, negative_prompt=FLAGS.negative_prompt,
                          num_steps=int(teacher_setting("num_steps", FLAGS.teacher_steps)),
                          shift=float(teacher_setting("shift", FLAGS.teacher_shift)),
                          guidance_scale=float(teacher_setting("guidance", FLAGS.guidance)))


def evaluate(rows: dict, world, videos: dict) -> dict:
  """Row name -> task -> results (None: the task does not apply to that generator). videos: row name ->
  prompt following's [(caption, video)], filled here when --videos_npz asks for them."""
  from tqdm import tqdm

  from hybrid_forcing_jax.world import eval_tasks
  from hybrid_forcing_jax.world.eval_generators import TeacherGenerator
  common = dict(num_videos=FLAGS.num_videos, seed=FLAGS.seed, batch_size=FLAGS.batch_size)
  results = {}
  for name, generate in rows.items():
    results[name] = {}
    for task in FLAGS.tasks:
      print(f"evaluate_world: {name}: {task} ...", file=sys.stderr, flush=True)
      if task == "long_horizon" and isinstance(generate, TeacherGenerator):
        # A bidirectional teacher makes one clip of the training length; long videos are the students'.
        results[name][task] = None
        continue
      frames = eval_tasks.horizon_frames(world, FLAGS.horizon_seconds) if task == "long_horizon" else world.num_frames
      with tqdm(total=FLAGS.num_videos * frames, unit="frame", desc=f"{name}: {task}", dynamic_ncols=True) as bar:
        generate.progress = bar.update   # the video frames made so far, over the task's videos
        if task == "long_horizon":
          out = eval_tasks.long_horizon(generate, world, seconds=FLAGS.horizon_seconds, **common)
        elif task == "prompt_following":
          keep = videos.setdefault(name, []) if FLAGS.videos_npz else None   # held only to be written
          out = eval_tasks.prompt_following(generate, world, split=FLAGS.prompt_split, keep=keep, **common)
        else:
          out = getattr(eval_tasks, task)(generate, world, **common)
        generate.progress = None
      results[name][task] = out
  return results


def table(header: list[str], body: list[list[str]]) -> str:
  widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
  line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
  return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in body])


def number(x) -> str:
  return "n/a" if x is None else f"{x:.3f}"


def report(results: dict, world, memory_note: str | None) -> str:
  parts = []
  names = list(results)
  if "prompt_following" in FLAGS.tasks:
    keys = ("colour", "shape", "direction", "all", "motion", "jumps", "step_within", "step_across")
    body = [[n] + [number(r.get(k)) if r else "n/a" for k in keys]
            for n, r in ((n, results[n]["prompt_following"]) for n in names)]
    captions = {"heldout": "held-out captions", "train": "training captions"}[FLAGS.prompt_split]
    parts.append(f"Prompt following: {captions}, {FLAGS.num_videos} videos of {world.num_frames} frames; jumps = share "
                 "of frame-to-frame steps over 3x the world's fastest motion; step = median pixels the object moves "
                 "a frame, within a latent frame and across two\n"
                 + table(["row", "colour", "shape", "direction", "all correct", "motion", "jumps", "step within",
                          "step across"], body))
  if "long_horizon" in FLAGS.tasks:
    done = [r["long_horizon"] for r in results.values() if r["long_horizon"]]
    windows = len(done[0]["object"]) if done else 0
    w = done[0]["window_seconds"] if done else 0
    header = ["row"] + [f"{i * w}-{(i + 1) * w}s" for i in range(windows)]
    body = []
    for n in names:
      r = results[n]["long_horizon"]
      for key, label in (("object", "object"), ("drift", "drift")):
        body.append([f"{n}: {label}"] + ([number(v) for v in r[key]] if r else ["n/a"] * windows))
    parts.append(f"Long horizon: {FLAGS.horizon_seconds:g} s of bouncing scenes, {FLAGS.num_videos} videos; per window: "
                 "object present with the caption's colour; drift = colour-histogram distance to the first window\n"
                 + table(header, body))
  if "long_memory" in FLAGS.tasks:
    body = [[n] + ([number(r["colour"]), number(r["back"]), str(r["prefix_frames"])] if r else ["n/a"] * 3)
            for n, r in ((n, results[n]["long_memory"]) for n in names)]
    appear, leave, back = world.long_memory_frames
    parts.append(f"Long memory: object seen in frames {appear}-{leave - 1}, back from frame {back}; the caption has no "
                 f"colour; teacher-forced prefix of the ground truth's frames; chance {1 / len(grammar.COLOURS):.3f}"
                 + (f"\nNOTE: {memory_note}" if memory_note else "") + "\n"
                 + table(["row", "colour at return", "object back", "prefix frames"], body))
  return "\n\n".join(parts)


def memory_note(stream, world, codec_temporal_factor: int) -> str | None:
  """Why this stream does not make long memory a memory test, if it does not (students only: the
  bidirectional teacher and the ground truth have no stream)."""
  if not FLAGS.dit or FLAGS.teacher:
    return None
  try:
    long_memory_fits(world, sink_frames=stream.sink_frames, window_frames=stream.window_frames,
                     chunk_frames=stream.chunk_frames, temporal_factor=codec_temporal_factor)
  except ValueError as e:
    return f"not a memory test under this stream: {e}"
  return None


def main(argv) -> int:
  stream, world = stream_and_world()
  check_flags()
  rows = build_generators(stream)
  videos = {}
  results = evaluate(rows, world, videos)
  codecs = [g.codec for g in rows.values() if hasattr(g, "codec")]
  note = memory_note(stream, world, codecs[0].config.temporal_factor if codecs else 4)
  print(report(results, world, note))
  if FLAGS.output_json:
    # Written whole or not at all (world/report.py and scripts/world_ablation.sh read what is there).
    with open(FLAGS.output_json + ".tmp", "w") as f:
      json.dump({"results": results, "dit": FLAGS.dit, "stream": stream.to_dict(), "world": world.to_dict(),
                 "num_videos": FLAGS.num_videos, "prompt_split": FLAGS.prompt_split, "seed": FLAGS.seed,
                 "teacher": FLAGS.teacher, "memory_note": note}, f, indent=2)
    os.replace(FLAGS.output_json + ".tmp", FLAGS.output_json)
  if FLAGS.videos_npz and videos:
    write_videos(FLAGS.videos_npz, videos)
  return cli.EXIT_OK


def write_videos(path: str, videos: dict) -> None:
  """Row name -> [(caption, video)] -> one compressed .npz, written whole or not at all."""
  import numpy as np
  arrays = {}
  for name, pairs in videos.items():
    arrays[f"{name}/videos"] = np.stack([v for _, v in pairs]).astype(np.uint8)
    arrays[f"{name}/captions"] = np.array([c for c, _ in pairs])
  with open(path + ".tmp", "wb") as f:
    np.savez_compressed(f, **arrays)
  os.replace(path + ".tmp", path)


if __name__ == "__main__":
  cli.run(main, "evaluate_world")
