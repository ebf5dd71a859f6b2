"""The world evaluation's three measurements, for any generator of world/eval_generators.py. Each
renders its examples (example i of a split is a pure function of (seed, split, i)), generates them in
batches and averages world/eval_metrics.py's scores. The protocols (docs/world.md, Evaluation):

  prompt_following  split `heldout` (colour-shape-direction combinations training never rendered),
                    every caption saying colour, shape and direction; videos of the training length.
                    Also `motion` (eval_metrics.motion_score), averaged over the videos where the object
                    is seen in two frames in a row: whether what moves moves like a world object; and
                    `step_within` / `step_across` (eval_metrics.latent_frame_steps, the generator's
                    `temporal_factor`): whether it moves within latent frames or only between them.
  long_horizon      split `train`, bouncing scenes only (the object never leaves the picture, so it
                    must be there in every window) with full captions; `seconds` of video, scored per
                    5-second window.
  long_memory       split `long_memory`: the object enters after the sink, leaves, and comes back;
                    the caption never says its colour. The generator is teacher-forced on the ground
                    truth's first chunks up to the frame where the object has left (it SAW the object),
                    then generates; scored on the colour at the return. Chance is 1 / number of colours.
                    Students are forced through their cache, the teacher by holding the prefix's latent
                    frames (training.teacher.euler_trajectory's `known`).
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from hybrid_forcing_jax.world import grammar
from hybrid_forcing_jax.world.dataset import world_example
from hybrid_forcing_jax.world.detect import detect
from hybrid_forcing_jax.world.eval_metrics import (jump_share, latent_frame_steps, motion_score, prompt_scores,
                                                   return_scores, window_scores)
from hybrid_forcing_jax.world.scene import WorldConfig

WINDOW_SECONDS = 5
TASKS = ("prompt_following", "long_horizon", "long_memory")


def _batches(world: WorldConfig, split: str, num_videos: int, seed: int, batch_size: int):
  examples = [world_example(world, split, seed, i) for i in range(num_videos)]
  for start in range(0, num_videos, batch_size):
    yield start // batch_size, examples[start:start + batch_size]


def _key(seed: int, task: str, batch: int):
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), TASKS.index(task)), batch)


def _mean(rows: list[dict[str, float | None]]) -> dict[str, float | None]:
  """Per key, the mean over the rows that have a value (None: a video where it cannot be measured)."""
  out = {}
  for k in rows[0]:
    values = [r[k] for r in rows if r[k] is not None]
    out[k] = float(np.mean(values)) if values else None
  return out


PROMPT_SPLITS = ("heldout", "train")


def prompt_following(generate, world: WorldConfig, *, num_videos: int, seed: int, batch_size: int,
                     split: str = "heldout", keep=None) -> dict:
  """split `heldout` (the generalisation test) or `train` (captions of the training distribution: whether
  the model learnt the world at all, before asking whether it composes). keep: optional list that receives
  (caption, video uint8 [T, H, W, 3]) per video, to look at what was scored."""
  if split not in PROMPT_SPLITS:
    raise ValueError(f"prompt following: split must be one of {PROMPT_SPLITS}, got {split!r}")
  world = dataclasses.replace(world, omit_probability=0.0)
  rows = []
  for batch, examples in _batches(world, split, num_videos, seed, batch_size):
    videos = generate(examples, world.num_frames, _key(seed, "prompt_following", batch))
    for v, e in zip(videos, examples):
      detection = detect(v)
      rows.append({**prompt_scores(detection, e), "motion": motion_score(detection, world),
                   "jumps": jump_share(detection, world), **latent_frame_steps(detection, generate.temporal_factor)})
    if keep is not None:
      keep += [(e["caption"], np.asarray(v)) for v, e in zip(videos, examples)]
  return {**_mean(rows), "split": split, "videos": len(rows)}


def horizon_frames(world: WorldConfig, seconds: float) -> int:
  """Frames of each long-horizon video."""
  return int(round(seconds * world.fps))


def long_horizon(generate, world: WorldConfig, *, seconds: float, num_videos: int, seed: int,
                 batch_size: int) -> dict:
  window = WINDOW_SECONDS * world.fps
  frames = horizon_frames(world, seconds)
  if frames < window:
    raise ValueError(f"long horizon: {seconds} s is shorter than one {WINDOW_SECONDS}-second window")
  world = dataclasses.replace(world, num_frames=frames, omit_probability=0.0, leaving_fraction=0.0,
                              long_memory_fraction=0.0)
  per_video = []
  for batch, examples in _batches(world, "train", num_videos, seed, batch_size):
    videos = generate(examples, frames, _key(seed, "long_horizon", batch))
    per_video += [window_scores(v, detect(v), e["colour"], window) for v, e in zip(videos, examples)]
  windows = [_mean([scores[i] for scores in per_video]) for i in range(len(per_video[0]))]
  return {"window_seconds": WINDOW_SECONDS, "object": [w["object"] for w in windows],
          "drift": [w["drift"] for w in windows], "videos": len(per_video)}


def long_memory(generate, world: WorldConfig, *, num_videos: int, seed: int, batch_size: int) -> dict:
  appear, leave, back = world.long_memory_frames
  prefix = generate.prefix_frames(leave)
  if prefix > back:
    raise ValueError(f"long memory: the teacher-forced prefix needs {prefix} frames to cover frame {leave}, past "
                     f"the return at frame {back}")
  rows = []
  for batch, examples in _batches(world, "long_memory", num_videos, seed, batch_size):
    videos = generate(examples, world.num_frames, _key(seed, "long_memory", batch), prefix_frames=prefix)
    rows += [return_scores(detect(v), e["colour"], back, world.num_frames) for v, e in zip(videos, examples)]
  return {**_mean(rows), "chance": 1.0 / len(grammar.COLOURS), "prefix_frames": prefix, "videos": len(rows)}
