"""The flow_matching stage and the world configs: the loss is zero for the exact velocity (x_t - x0) /
sigma, its t follows the shifted uniform law (one t per video) and captions drop at their rate; the
stage built from configs/world/teacher.py:tiny overfits one world video through the trainer's step (the
loss at fixed draws falls >= 10x, or 4x for the x0-predicting DiT); bad inputs are refused naming the key; every world config parses,
with its `:tiny` variant, and the later stages use the teacher's architecture and geometry."""
from __future__ import annotations

import dataclasses
import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.world import common
from configs.world import teacher as teacher_config
from hybrid_forcing_jax import flow
from hybrid_forcing_jax.training import builders, optim, stages
from hybrid_forcing_jax.training.config import ConfigError, parse
from hybrid_forcing_jax.training.losses.flow_matching import drop_captions, flow_matching_loss, noised_inputs
from hybrid_forcing_jax.training.state import TrainState
from hybrid_forcing_jax.world.assets import prepare
from hybrid_forcing_jax.world.scene import long_memory_fits

WORLD_CONFIGS = ("teacher", "ode_init", "self_forcing", "hybrid")


@pytest.fixture(scope="module")
def world_run(tmp_path_factory):
  """configs/world/teacher.py:tiny pointed at a prepared folder (text, codec, prompts)."""
  root = tmp_path_factory.mktemp("world")
  prepare(str(root), 4, 0)
  c = teacher_config.get_config("tiny")
  c.text.update(dict(encoder=f"{root}/text/text_encoder", tokenizer=f"{root}/text/tokenizer",
                     cache_dir=f"{root}/text_cache"))
  c.data.codec = f"{root}/codec"
  return c, root


class _ExactVelocity:
  """A stand-in model that knows the clean video: v = (x_t - x0) / sigma, the flow's velocity."""

  def __init__(self, x0):
    self.x0 = x0

  def apply(self, variables, x_t, t, context):
    return flow.velocity_from_x0(x_t, self.x0, t / flow.NUM_TRAIN_TIMESTEPS)


def test_loss_is_zero_for_the_exact_velocity_and_positive_otherwise():
  x0 = jax.random.normal(jax.random.key(0), (4, 3, 4, 4, 8))
  batch = {"latents": x0, "context": jnp.ones((4, 5, 6))}
  frozen = {"negative_context": jnp.zeros((1, 5, 6))}
  loss = functools.partial(flow_matching_loss, shift=5.0, caption_dropout=0.5)
  exact, metrics = loss(None, frozen, batch, jax.random.key(1), model=_ExactVelocity(x0))
  assert float(exact) < 1e-8
  assert 0.0 <= float(metrics["caption_dropped"]) <= 1.0 and 0.0 < float(metrics["t"]) < 1000.0
  wrong, _ = loss(None, frozen, batch, jax.random.key(1), model=_ExactVelocity(0.5 * x0))
  assert float(wrong) > 0.01


def test_timestep_law_is_the_shifted_uniform_one_t_per_video():
  latents = jnp.zeros((4096, 3, 1, 1, 1))
  x_t, t, eps = noised_inputs(latents, jax.random.key(0), shift=5.0)
  assert t.shape == (4096, 3) and bool(jnp.all(t == t[:, :1]))
  np.testing.assert_allclose(x_t, eps * (t / 1000.0)[..., None, None, None], rtol=1e-6)   # x0 = 0
  sigma = np.asarray(t[:, 0], np.float64) / 1000.0
  u = sigma / (5.0 - 4.0 * sigma)   # the inverse of the shift: uniform on [0, 1)
  assert sigma.min() >= 0.0 and sigma.max() <= 1.0
  np.testing.assert_allclose(np.quantile(u, [0.1, 0.25, 0.5, 0.75, 0.9]), [0.1, 0.25, 0.5, 0.75, 0.9], atol=0.03)


def test_captions_drop_to_the_negative_prompt_at_their_rate():
  context, negative = jnp.ones((2000, 3, 2)), jnp.full((1, 3, 2), -1.0)
  out, dropped = drop_captions(context, negative, jax.random.key(0), caption_dropout=0.1)
  assert abs(float(dropped.mean()) - 0.1) < 0.03
  np.testing.assert_array_equal(out[dropped], -1.0)
  np.testing.assert_array_equal(out[~dropped], 1.0)
  out, dropped = drop_captions(context, negative, jax.random.key(0), caption_dropout=0.0)
  assert not bool(dropped.any()) and bool(jnp.all(out == context))


# (prediction, lr, steps, factor): an x0-predicting DiT starts near "the clean video is 0" (its head is
# zero-initialised and the world is mostly a flat background), so its loss has less to fall; its v-loss weighs
# the x0 error by 1 / sigma^2 and is unstable at the velocity model's LR (its loss rose again after 300 steps).
OVERFIT = [("velocity", 2e-3, 300, 10.0), ("x0", 5e-4, 600, 4.0)]


@pytest.mark.parametrize("prediction,lr,num_steps,factor", OVERFIT)
def test_stage_overfits_one_world_video(world_run, prediction, lr, num_steps, factor):
  c, _ = world_run
  c = c.copy_and_resolve_references()
  c.model.overrides.prediction = prediction
  c.optim.lr = lr
  run = parse(c)
  stages.check_inputs(run)
  model, params = builders.build_dit(run.model, seed=0, param_dtype=jnp.float32)
  optimizer = optim.make_optimizer(run.optim)
  stage = stages.STAGES[run.stage](run, model, optimizer)
  (update,) = stage.updates
  example = update.dataset[0]
  assert example["latents"].shape == (run.data.num_frames, *run.data.latent_hw, model.config.in_dim)
  batch = {k: jnp.asarray(v)[None] for k, v in example.items()}
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                     ema=optim.init_ema(params), rng=jax.random.key_data(jax.random.key(0)))
  step = jax.jit(update.step_fn)
  # The loss at 16 fixed (t, eps) draws, captions kept: a stable measure of a noisy objective.
  loss = jax.jit(functools.partial(flow_matching_loss, model=model, shift=run.flow_matching.shift, caption_dropout=0.0))
  measure = lambda p: np.mean([loss(p, stage.frozen, batch, jax.random.key(100 + i))[0] for i in range(16)])  # noqa: E731
  before = measure(params)
  key = jax.random.key(1)
  for _ in range(num_steps):
    state, metrics = step(state, batch, key, stage.frozen)
  after = measure(state.params)
  assert np.isfinite(float(metrics["loss"]))
  assert after * factor <= before, (before, after)


def test_bad_inputs_are_refused_naming_the_key(world_run, tmp_path):
  c, root = world_run
  wrong_hw = c.copy_and_resolve_references()
  wrong_hw.data.latent_hw = (8, 8)
  with pytest.raises(ConfigError, match="config.data"):
    stages.check_inputs(parse(wrong_hw))
  not_a_codec = c.copy_and_resolve_references()
  not_a_codec.data.codec = f"{root}/text/text_encoder"
  with pytest.raises(ConfigError, match="config.data.codec"):
    stages.check_inputs(parse(not_a_codec))
  wrong_text = c.copy_and_resolve_references()
  wrong_text.model.overrides.text_dim = 32
  with pytest.raises(ConfigError, match="text_dim"):
    stages.check_inputs(parse(wrong_text))
  typo = c.copy_and_resolve_references()
  typo.flow_matching.caption_dropout = 1.0
  with pytest.raises(ConfigError, match="config.flow_matching.caption_dropout"):
    parse(typo)
  typo.flow_matching.caption_dropout = 0.1
  typo.world.hieght = 32
  with pytest.raises(ConfigError, match="config.world"):
    parse(typo)


@pytest.mark.parametrize("variant", ["", "tiny", "frame", "tiny,frame"])
def test_world_configs_parse_and_share_the_teachers_architecture(variant):
  runs = {name: parse(importlib.import_module(f"configs.world.{name}").get_config(variant)) for name in WORLD_CONFIGS}
  teacher = runs["teacher"]
  architecture = builders.wan_config(teacher.model)
  # The layout's codec: its channels in and out of every DiT, its video length -> the latent frames trained on.
  codec = common.codec(variant)
  assert architecture.in_dim == architecture.out_dim == codec.z_dim
  assert teacher.data.num_frames == 1 + (teacher.world.num_frames - 1) // codec.temporal_factor
  assert teacher.data.codec == f"{common.data_folder(variant)}/codec"
  if "tiny" not in variant:   # the full-size worlds' long-memory videos test the hybrid students' memory
    stream = runs["hybrid"].stream
    long_memory_fits(teacher.world, sink_frames=stream.sink_frames, window_frames=stream.window_frames,
                     chunk_frames=stream.chunk_frames, temporal_factor=codec.temporal_factor)
    assert teacher.data.num_frames == 21 and runs["ode_init"].teacher.checkpoint.startswith(
        common.runs_folder(variant) + "/teacher/export/")
  for name, run in runs.items():
    assert (run.data.num_frames, tuple(run.data.latent_hw)) == (teacher.data.num_frames, tuple(teacher.data.latent_hw))
    assert run.text == teacher.text
    for section in ("model", "teacher", "critic"):
      if getattr(run, section) is not None:
        assert dataclasses.replace(builders.wan_config(getattr(run, section)), linear_proj=False) == architecture, \
            (name, section)
  assert runs["hybrid"].dmd.vae == runs["self_forcing"].dmd.vae == teacher.data.codec
