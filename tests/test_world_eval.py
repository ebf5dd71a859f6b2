"""`python -m hybrid_forcing_jax.evaluate_world`: the measurements read back what the examples say on the
world's own videos (1.0 everywhere), the teacher-forced prefix of the long-memory protocol is exactly the
ground truth's frames, and the script runs end to end on a tiny random model and prints its tables."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybrid_forcing_jax import flow
from hybrid_forcing_jax.dit import WanDiT
from hybrid_forcing_jax.streaming.config import StreamConfig
from hybrid_forcing_jax.world import eval_tasks
from hybrid_forcing_jax.world.codec import PixelCodec
from hybrid_forcing_jax.world.dataset import world_example
from hybrid_forcing_jax.training import guidance
from hybrid_forcing_jax.training.teacher import euler_trajectory
from hybrid_forcing_jax.world.eval_generators import GroundTruth, StreamGenerator, TeacherGenerator
from hybrid_forcing_jax.world.detect import detect
from hybrid_forcing_jax.world.eval_metrics import (colour_histogram, histogram_distance, jump_share,
                                                   latent_frame_steps, motion_score)
from hybrid_forcing_jax.world.scene import WorldConfig
from hybrid_forcing_jax.world.text import world_text_encoder
from tests.world_fixtures import save_world_model, world_dit_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_WORLD = WorldConfig(height=32, width=32)   # 8x8 tokens a latent frame: the model runs stay quick
STREAM = StreamConfig(sparse_ratio=None)          # Hybrid Forcing's sink, window, linear memory, relative RoPE


def test_ground_truth_scores_one_everywhere():
  world, truth = WorldConfig(), GroundTruth()
  common = dict(seed=3, batch_size=5)
  for split in ("heldout", "train"):
    following = eval_tasks.prompt_following(truth, world, num_videos=12, split=split, **common)
    assert following.pop("motion") > 0.9   # not 1: a leaving object's visible part moves slower at the border
    assert following.pop("jumps") == 0.0
    # A world object moves alike within a latent frame and across two: ~1.2 px a frame at 64x64.
    within, across = following.pop("step_within"), following.pop("step_across")
    assert 0.8 < within < 1.6 and 0.8 < across < 1.6 and abs(within - across) < 0.3, (within, across)
    assert following == {"colour": 1.0, "shape": 1.0, "direction": 1.0, "all": 1.0, "split": split, "videos": 12}
  horizon = eval_tasks.long_horizon(truth, world, seconds=20, num_videos=4, **common)
  assert horizon["object"] == [1.0] * 4 and max(horizon["drift"]) < 0.01
  memory = eval_tasks.long_memory(truth, world, num_videos=12, **common)
  assert memory["colour"] == 1.0 and memory["back"] == 1.0 and memory["chance"] == pytest.approx(1 / 6)


def test_drift_is_the_total_variation_of_colour_histograms():
  grey = np.full((2, 4, 4, 3), 128, np.uint8)
  half_red = grey.copy()
  half_red[:, :2] = (220, 40, 40)
  assert histogram_distance(colour_histogram(grey), colour_histogram(grey)) == 0.0
  assert histogram_distance(colour_histogram(grey), colour_histogram(half_red)) == 0.5


@pytest.fixture(scope="module")
def tiny_world_model():
  config = world_dit_config(linear_proj=True)
  from hybrid_forcing_jax.dit import init_params
  params = init_params(config, jax.random.key(0), param_dtype=jnp.float32)
  model = WanDiT(config, dtype=jnp.float32, param_dtype=jnp.float32, attention_backend="xla")
  return model, params, world_text_encoder().encode


def with_random_head(params):
  """Wan's zero output head makes the velocity 0 whatever the input; a random one makes it depend on it."""
  head = params["head"]["head"]
  weight = (0.05 * jax.random.normal(jax.random.key(1), head["weight"].shape)).astype(head["weight"].dtype)
  return {**params, "head": {**params["head"], "head": {**head, "weight": weight}}}


def test_long_memory_prefix_is_the_ground_truth_then_the_model_generates(tiny_world_model):
  model, params, embed = tiny_world_model
  generate = StreamGenerator(model, params, STREAM, PixelCodec(), {}, embed)
  prefix = generate.prefix_frames(SMALL_WORLD.long_memory_frames[1])
  assert prefix == 33   # chunks of 9 + 12 + 12 frames cover the frames up to where the object has left
  example = world_example(SMALL_WORLD, "long_memory", 0, 0)
  video = generate([example], 45, jax.random.key(0), prefix_frames=prefix)[0]
  assert video.shape == (45, 32, 32, 3)
  np.testing.assert_array_equal(video[:prefix], example["video"][:prefix])   # lossless codec, written not generated
  assert np.abs(video[prefix:].astype(int) - example["video"][prefix:45]).max() > 0


def test_teacher_holds_the_ground_truth_prefix_and_scores_in_unit_range(tiny_world_model):
  model, params, embed = tiny_world_model
  teacher = TeacherGenerator(model, with_random_head(params), PixelCodec(), {}, embed, negative_prompt="", num_steps=2,
                             shift=5.0, guidance_scale=3.0)
  scores = eval_tasks.prompt_following(teacher, SMALL_WORLD, num_videos=2, seed=0, batch_size=2)
  assert all(0.0 <= scores[k] <= 1.0 for k in ("colour", "shape", "direction", "all"))
  prefix = teacher.prefix_frames(SMALL_WORLD.long_memory_frames[1])
  assert prefix == 33   # latent frames 0-8, as the student's three chunks
  example = world_example(SMALL_WORLD, "long_memory", 0, 0)
  video = teacher([example], SMALL_WORLD.num_frames, jax.random.key(0), prefix_frames=prefix)[0]
  np.testing.assert_array_equal(video[:prefix], example["video"][:prefix])   # held, then decoded losslessly
  assert np.abs(video[prefix:].astype(int) - example["video"][prefix:]).max() > 0
  # The rest is made seeing the prefix: another video's prefix, same caption and noise, changes it.
  other = dict(example, video=world_example(SMALL_WORLD, "long_memory", 0, 1)["video"])
  changed = teacher([other], SMALL_WORLD.num_frames, jax.random.key(0), prefix_frames=prefix)[0]
  assert np.abs(changed[prefix:].astype(int) - video[prefix:]).max() > 0
  memory = eval_tasks.long_memory(teacher, SMALL_WORLD, num_videos=2, seed=0, batch_size=2)
  assert memory["prefix_frames"] == 33 and 0.0 <= memory["colour"] <= memory["back"] <= 1.0


def test_inpainting_holds_the_known_frames_on_the_noise_path(tiny_world_model):
  """euler_trajectory(known=): every kept point has the known frames at its sigma on the straight path from
  the sample's own noise (the replacement method), the final sample has them exactly, and the other frames
  differ from the unheld sample (they are denoised in the held frames' context)."""
  model, params, embed = tiny_world_model
  params = with_random_head(params)
  noise = jax.random.normal(jax.random.key(1), (1, 3, 4, 4, model.config.in_dim))
  known = jax.random.normal(jax.random.key(2), (1, 1, 4, 4, model.config.in_dim))
  kv = guidance.text_kv(model, params, embed(["a red circle bouncing"]))
  uncond = guidance.text_kv(model, params, embed([""]))
  sampler = dict(num_steps=3, shift=5.0, guidance=3.0)
  sigmas = flow.euler_sigmas(3, 5.0)
  held = euler_trajectory(model, params, noise, kv, uncond, keep=(0, 1, 2, 3), known=known, **sampler)
  for i, sigma in enumerate(sigmas):
    np.testing.assert_allclose(np.asarray(held[:, i, :1]), np.asarray(flow.add_noise(known, noise[:, :1], sigma)),
                               rtol=1e-6, atol=1e-6)
  plain = euler_trajectory(model, params, noise, kv, uncond, keep=(3,), **sampler)
  assert float(jnp.abs(held[:, -1, 1:] - plain[:, -1, 1:]).max()) > 1e-4


def run_evaluate(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", "hybrid_forcing_jax.evaluate_world", *args], capture_output=True,
                        text=True, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=timeout)


def test_cli_prints_the_tables_for_a_random_model(tmp_path):
  folders = save_world_model(str(tmp_path / "model"))
  config = tmp_path / "small_world.py"
  config.write_text("import ml_collections\nfrom configs import hybrid\n\n\ndef get_config():\n"
                    "  c = hybrid.get_config()\n  c.stream.sparse_ratio = None\n"
                    "  c.world = ml_collections.ConfigDict(dict(height=32, width=32))\n  return c\n")
  out = tmp_path / "results.json"
  done = run_evaluate(f"--config={config}", f"--dit={folders['dit']}", f"--text={folders['text']}",
                      f"--codec={folders['codec']}", "--random", "--ground_truth", "--num_videos=1",
                      "--horizon_seconds=5", "--attention_backend=xla", f"--output_json={out}",
                      f"--videos_npz={tmp_path / 'videos.npz'}")
  assert done.returncode == 0, done.stderr[-2000:]
  for needle in ("Prompt following", "Long horizon", "Long memory", "random weights", "ground truth", "0-5s"):
    assert needle in done.stdout
  results = json.loads(out.read_text())["results"]
  assert list(results) == ["dit", "random weights", "ground truth"]
  values = [v for row in results.values() for task in row.values() for k, v in task.items()
            if k not in ("videos", "prefix_frames", "window_seconds", "split")]
  flat = [x for v in values for x in (v if isinstance(v, list) else [v])]
  assert flat and all(0.0 <= x <= 1.0 for x in flat)
  truth = results["ground truth"]
  assert truth["prompt_following"]["all"] == 1.0 and truth["long_horizon"]["object"] == [1.0]
  assert truth["long_memory"]["colour"] == 1.0
  # --videos_npz keeps what prompt following scored: the ground-truth row is the world's own video.
  example = world_example(WorldConfig(height=32, width=32, omit_probability=0.0), "heldout", 0, 0)
  with np.load(tmp_path / "videos.npz") as kept:
    assert sorted(kept.files) == sorted(f"{r}/{k}" for r in results for k in ("videos", "captions"))
    assert kept["dit/videos"].shape == kept["ground truth/videos"].shape == (1,) + example["video"].shape
    np.testing.assert_array_equal(kept["ground truth/videos"][0], example["video"])
    assert list(kept["ground truth/captions"]) == [example["caption"]]


@pytest.mark.parametrize("args,needle", [
    (["--config=configs/hybrid.py"], "nothing to evaluate"),
    (["--config=configs/hybrid.py", "--random", "--ground_truth"], "--random needs --dit"),
    (["--config=configs/hybrid.py", "--dit=/nonexistent", "--text=/x", "--codec=/y"], "--dit='/nonexistent' is not a folder"),
    (["--config=configs/hybrid.py", "--ground_truth", "--tasks=speed"], "--tasks: unknown ['speed']"),
    (["--ground_truth"], "give --config"),
])
def test_bad_input_exits_2_with_one_line(args, needle):
  done = run_evaluate(*args, timeout=120)
  assert done.returncode == 2, done.stderr[-1000:]
  assert needle in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_cli_evaluates_the_shipped_model():
  """The issue's check: the evaluation runs on the shipped student and prints its table (one video a task, 5 s
  horizon: the CPU budget), on the world of its config (the `frame` layout's 21-frame videos); the numbers are the
  model's, so only their range is asserted."""
  from hybrid_forcing_jax.pipeline import SHIPPED_MODEL, model_folders
  folders = model_folders(SHIPPED_MODEL)
  done = run_evaluate("--config=configs/world/hybrid.py:frame", f"--dit={folders['dit']}",
                      f"--text={os.path.dirname(folders['text_encoder'])}", f"--codec={folders['vae']}",
                      "--tasks=prompt_following,long_horizon", "--num_videos=1", "--batch_size=1",
                      "--horizon_seconds=5")
  assert done.returncode == 0, done.stderr[-2000:]
  assert "Prompt following: held-out captions, 1 videos of 21 frames" in done.stdout and "Long horizon" in done.stdout
  # a progress bar per task, over the video frames it makes, run to its end (5 s at 16 fps: 80 frames)
  bars = done.stderr.replace("\r", "\n").splitlines()
  assert any(line.startswith("dit: prompt_following: 100%") and "21/21" in line for line in bars), done.stderr[-2000:]
  assert any(line.startswith("dit: long_horizon: 100%") and "80/80" in line for line in bars), done.stderr[-2000:]


def _square_video(xs, frames: int = 20, size: int = 12) -> np.ndarray:
  """A red square on black, its left edge at xs[t] pixels in frame t, 64x64."""
  video = np.zeros((frames, 64, 64, 3), np.uint8)
  for t in range(frames):
    x = int(round(xs[t]))
    video[t, 26:26 + size, x:x + size] = (220, 40, 40)
  return video


def test_motion_score_passes_world_motion_and_fails_still_and_jumping_objects():
  world = WorldConfig()   # 64x64: speeds 0.77-1.92 px a frame on the main axis
  t = np.arange(20)
  assert motion_score(detect(_square_video(10 + 1.0 * t)), world) == 1.0   # one pixel a frame
  assert motion_score(detect(_square_video(np.full(20, 20.0))), world) == 0.0   # standing still
  # Still for 4 frames, then 4 pixels at once (a latent frame's object that does not move within it).
  assert motion_score(detect(_square_video(10 + 4.0 * (t // 4))), world) == 0.0
  assert motion_score(detect(np.zeros((5, 64, 64, 3), np.uint8)), world) is None   # never seen


def test_jump_share_counts_steps_over_three_times_the_fastest_world_motion():
  world = WorldConfig()   # fastest: 1.92 px a frame on the main axis, 2.07 with the cross drift: jumps > 6.2 px
  t = np.arange(20)
  assert jump_share(detect(_square_video(10 + 1.9 * t)), world) == 0.0   # the fastest world object
  assert jump_share(detect(_square_video(10 + 4.0 * (t // 4))), world) == 0.0   # 4 px steps: wrong, not jumps
  teleport = np.where(t < 10, 10.0, 40.0)   # one 30-pixel step among 19
  assert jump_share(detect(_square_video(teleport)), world) == pytest.approx(1 / 19)
  assert jump_share(detect(np.zeros((5, 64, 64, 3), np.uint8)), world) is None   # never seen


def test_latent_frame_steps_split_steps_at_the_codecs_latent_frames():
  t = np.arange(21)
  latent = np.where(t == 0, 0, (t - 1) // 4 + 1)   # frame 0 alone, then 4 frames a latent frame
  steady = latent_frame_steps(detect(_square_video(10 + 1.0 * t, frames=21)), temporal_factor=4)
  assert steady == {"step_within": pytest.approx(1.0), "step_across": pytest.approx(1.0)}
  # Still within each latent frame, 4 pixels at each boundary: what teacher4 did.
  jumps = latent_frame_steps(detect(_square_video(10 + 4.0 * latent, frames=21)), temporal_factor=4)
  assert jumps == {"step_within": pytest.approx(0.0), "step_across": pytest.approx(4.0)}
  # One frame a latent frame: every step crosses a boundary.
  assert latent_frame_steps(detect(_square_video(10 + 1.0 * t, frames=21)), temporal_factor=1) == {
      "step_within": None, "step_across": pytest.approx(1.0)}
