"""The world's latent layouts (configs/world/common.LAYOUTS): world.prepare writes the layout's codec and refuses
a folder prepared for another one; the pipeline scripts take the layout and refuse what they cannot run."""
import os
import subprocess
import sys

import pytest

from configs.world import common
from hybrid_forcing_jax.latent_codec import load_latent_codec
from hybrid_forcing_jax.world.codec import PixelCodec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def prepare(output, *flags):
  return subprocess.run([sys.executable, "-m", "hybrid_forcing_jax.world.prepare", f"--output={output}",
                         "--num_prompts=2", *flags], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)


def test_prepare_writes_the_layouts_codec_and_refuses_a_folder_of_another(tmp_path):
  out = tmp_path / "world_frame"
  done = prepare(out, f"--temporal_factor={common.codec('frame').temporal_factor}")
  assert done.returncode == 0, done.stderr[-2000:]
  codec, _ = load_latent_codec(str(out / "codec"))
  assert isinstance(codec, PixelCodec) and codec.config == common.codec("frame")
  config_json = (out / "codec" / "config.json").read_text()
  done = prepare(out)   # the default layout's codec, asked of the `frame` folder
  assert done.returncode == 2
  assert done.stderr.strip().startswith(f"world.prepare: error: {out / 'codec'} holds the codec"), done.stderr
  assert len(done.stderr.strip().splitlines()) == 1
  assert (out / "codec" / "config.json").read_text() == config_json   # nothing overwritten
  done = prepare(out, "--temporal_factor=1")   # the same layout again: every part kept
  assert done.returncode == 0 and done.stdout.count("kept") == 3, done.stdout


def test_prepare_writes_long_memory_prompts_and_refuses_other_settings_for_kept_ones(tmp_path):
  """--long_memory_fraction: that share of the prompts are long-memory scenes' captions (no colour said); a kept
  prompts.txt written with other settings (prompts.json) is refused, not silently reused for other prompts."""
  from hybrid_forcing_jax.world import grammar
  from hybrid_forcing_jax.world.captions import training_captions
  from hybrid_forcing_jax.world.scene import WorldConfig
  out = tmp_path / "memory"
  done = prepare(out, "--long_memory_fraction=1")
  assert done.returncode == 0, done.stderr[-2000:]
  prompts = (out / "prompts.txt").read_text().splitlines()
  assert prompts == training_captions(2, 0, WorldConfig(long_memory_fraction=1.0)) != training_captions(2, 0)
  assert all("out of view and back" in p and not any(c in p.split() for c in grammar.COLOURS) for p in prompts)
  written = (out / "prompts.txt").read_text()
  for flags in ((), ("--long_memory_fraction=0.5",), ("--long_memory_fraction=1", "--seed=1")):
    done = prepare(out, *flags)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"{out / 'prompts.txt'} was written with" in done.stderr, done.stderr
  assert (out / "prompts.txt").read_text() == written   # nothing overwritten
  assert prepare(out, "--long_memory_fraction=1").returncode == 0   # the same settings: kept
  done = prepare(tmp_path / "w", "--long_memory_fraction=1.5")
  assert done.returncode == 2 and "--long_memory_fraction must be in [0, 1], got 1.5" in done.stderr
  assert not (tmp_path / "w").exists()


def test_prepare_refuses_a_temporal_factor_below_one(tmp_path):
  done = prepare(tmp_path / "w", "--temporal_factor=0")
  assert done.returncode == 2 and "--temporal_factor must be >= 1, got 0" in done.stderr
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("script", ["world_pipeline.sh", "world_ablation.sh"])
def test_scripts_refuse_an_unknown_layout_naming_the_choices(script, tmp_path):
  done = subprocess.run(["bash", f"scripts/{script}", "--tiny", "--layout=frames", f"--data={tmp_path}/d",
                         f"--runs={tmp_path}/r"], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
  assert done.returncode == 2
  assert done.stderr.strip() == (f"{script}: error: configs/world: variant 'tiny,frames': use comma-separated "
                                 "keywords, 'tiny' and at most one layout of ['frame', 'frame4'] (e.g. 'frame' or "
                                 "'tiny,frame')")
  assert not os.path.exists(tmp_path / "d") and not os.path.exists(tmp_path / "r")


def test_pipeline_refuses_a_teacher_that_is_no_export(tmp_path):
  (tmp_path / "teacher").mkdir()
  done = subprocess.run(["bash", "scripts/world_pipeline.sh", "--tiny", f"--teacher={tmp_path}/teacher",
                         f"--data={tmp_path}/d", f"--runs={tmp_path}/r"], capture_output=True, text=True, cwd=ROOT,
                        env=ENV, timeout=300)
  assert done.returncode == 2
  assert done.stderr.strip() == (f"world_pipeline.sh: error: --teacher={tmp_path}/teacher has no config.json "
                                 "(not an exported model folder)")
  assert not os.path.exists(tmp_path / "d")


def test_layouts_tokens_a_video():
  """Every layout: 21 latent frames of 32x32 latents; the `frame` layouts pack one video frame a latent frame (12
  channels) where the default packs four (48); `frame4`'s 4x4 patches (its DiT, teacher and critic alike) make a
  quarter of the tokens."""
  from configs.world import hybrid
  for variant, video_frames, channels, patch, tokens in (("", 81, 48, 2, 5376), ("frame", 21, 12, 2, 5376),
                                                         ("frame4", 21, 12, 4, 1344)):
    frames, (h, w) = common.latent_geometry(variant)
    assert (frames, (h, w), common.channels(variant)["in_dim"]) == (21, (32, 32), channels), variant
    assert common.world(variant).num_frames == video_frames
    c = hybrid.get_config(variant)
    assert {tuple(c[s].overrides.patch_size) for s in ("model", "teacher", "critic")} == {(1, patch, patch)}
    assert frames * (h // patch) * (w // patch) == tokens


@pytest.mark.parametrize("steps", ["ode_init=0", "odeinit=5", "hybrid"])
def test_pipeline_refuses_steps_it_cannot_read(steps, tmp_path):
  done = subprocess.run(["bash", "scripts/world_pipeline.sh", "--tiny", f"--steps={steps}", f"--data={tmp_path}/d",
                         f"--runs={tmp_path}/r"], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
  assert done.returncode == 2
  assert done.stderr.strip().startswith(f"world_pipeline.sh: error: --steps: '{steps}' is not STAGE=N")
  assert not os.path.exists(tmp_path / "d")


def test_student_configs_carry_the_world_they_are_distilled_for():
  """configs/world/{ode_init,self_forcing,hybrid}.py hold their layout's world (evaluate_world's default world for
  them); the trainer accepts the section and the top-level configs, which have none, still parse."""
  import importlib
  from configs import hybrid
  from hybrid_forcing_jax.training.config import parse
  for variant in ("", "frame", "frame4", "tiny,frame"):
    for stage in ("ode_init", "self_forcing", "hybrid"):
      config = importlib.import_module(f"configs.world.{stage}").get_config(variant)
      assert parse(config).world == common.world(variant), (stage, variant)
  assert parse(hybrid.get_config()).world is None


def test_pipeline_until_stops_after_that_step(tmp_path):
  """--until=prepare: the world assets are written, nothing of the teacher's step runs, exit 0."""
  done = subprocess.run(["bash", "scripts/world_pipeline.sh", "--tiny", "--until=prepare", f"--data={tmp_path}/d",
                         f"--runs={tmp_path}/r"], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
  assert done.returncode == 0, done.stderr
  assert (tmp_path / "d" / "prompts.txt").is_file() and (tmp_path / "d" / "codec").is_dir()
  assert "stopped after prepare (--until)" in done.stdout and "== world_pipeline.sh: teacher" not in done.stdout
  assert not os.path.exists(tmp_path / "r")


def test_pipeline_refuses_an_unknown_until(tmp_path):
  done = subprocess.run(["bash", "scripts/world_pipeline.sh", "--tiny", "--until=odeinit", f"--data={tmp_path}/d",
                         f"--runs={tmp_path}/r"], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
  assert done.returncode == 2
  assert done.stderr.strip().startswith("world_pipeline.sh: error: --until: 'odeinit' is not a step; steps: prepare,")
  assert not os.path.exists(tmp_path / "d")
