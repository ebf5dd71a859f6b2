"""DMD's two updates (training/steps.py make_dmd_steps) and the generator's loss (training/losses/generator.py)
on tiny models:
  * the generator step trains the generator only (the critic and its optimiser state come back bit for
    bit, the step counter stays), the critic step the critic only (and counts the step); each loss sees
    the other network's current weights as a frozen input;
  * the generator's loss (phase 2: a long rollout through the VAE rule, DMD, the regulariser at exit step
    0) sends no gradient into the teacher, the critic, the VAE or the negative prompt; the critic's loss
    none into the generator (its rollout) or the VAE;
  * the regulariser's "records" path (the teacher's target precomputed from the example's noise key, as
    make_teacher_rollouts does) gives the same loss as the "online" path.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hybrid_forcing_jax.training import optim, steps
from hybrid_forcing_jax.training.dmd_setup import DmdSetup
from hybrid_forcing_jax.training.losses.critic_step import critic_loss
from hybrid_forcing_jax.training.losses.generator import generator_loss
from hybrid_forcing_jax.training.losses.scores import teacher_rollout_fn
from hybrid_forcing_jax.training.rollout import draw_rollout_plan, window_noise
from hybrid_forcing_jax.training.state import TrainState
from tests.streaming_fixtures import LATENT_HW, context, random_linear_proj, tiny_model
from tests.test_train_rollout import HYBRID, _vae

OPTIM = ml_collections.ConfigDict(dict(lr=0.1, b1=0.0, b2=0.999, eps=1e-8, weight_decay=0.01, clip_norm=10.0,
                                       warmup_steps=0, grad_accum=1))


def _toy_losses():
  """The generator is pulled toward critic + teacher, the critic toward the generator; each reports a
  draw of its key, to show the two updates of one step draw independently."""
  def gen_loss(params, frozen, batch, rng):
    target = frozen["critic"]["w"] + frozen["teacher"] + batch["x"].mean()
    return jnp.sum((params["w"] - target) ** 2), {"draw": jax.random.uniform(rng)}

  def critic_loss(params, frozen, batch, rng):
    return jnp.sum((params["w"] - frozen["generator"]["w"]) ** 2), {"draw": jax.random.uniform(rng)}

  return gen_loss, critic_loss


def test_each_update_trains_only_its_network():
  gen_opt, critic_opt = optim.make_optimizer(OPTIM), optim.make_optimizer(OPTIM)
  gen_step, critic_step = steps.make_dmd_steps(*_toy_losses(), gen_opt, critic_opt, ema_decay=0.5, ema_start=0,
                                               generator_dtype=jnp.float32, critic_dtype=jnp.float32)
  params, critic = {"w": jnp.zeros(3)}, {"w": jnp.full(3, 2.0)}
  state = TrainState(step=jnp.asarray(5, jnp.int32), params=params, opt_state=gen_opt.init(params),
                     ema=optim.init_ema(params), rng=None, critic=critic, critic_opt_state=critic_opt.init(critic))
  frozen, batch, rng = {"teacher": jnp.float32(1.0)}, {"x": jnp.zeros((2, 1))}, jax.random.key(0)

  after_gen, gen_metrics = jax.jit(gen_step)(state, batch, rng, frozen)
  assert int(after_gen.step) == 5
  assert jax.tree.all(jax.tree.map(np.array_equal, (after_gen.critic, after_gen.critic_opt_state),
                                   (state.critic, state.critic_opt_state)))
  # AdamW's first step moves every weight by lr toward the target 2 + 1 (minus weight decay's lr * wd * 0).
  np.testing.assert_allclose(after_gen.params["w"], np.full(3, 0.1), rtol=1e-5)
  np.testing.assert_allclose(after_gen.ema["w"], np.full(3, 0.05), rtol=1e-5)   # 0.5 * 0 + 0.5 * 0.1
  np.testing.assert_allclose(gen_metrics["generator_loss"], 27.0)
  assert {"generator_grad_norm", "generator_lr", "draw"} <= set(gen_metrics)

  after_critic, critic_metrics = jax.jit(critic_step)(after_gen, batch, rng, frozen)
  assert int(after_critic.step) == 6
  assert jax.tree.all(jax.tree.map(np.array_equal, (after_critic.params, after_critic.opt_state, after_critic.ema),
                                   (after_gen.params, after_gen.opt_state, after_gen.ema)))
  # The critic saw the generator's updated weights (0.1) and moved toward them.
  np.testing.assert_allclose(critic_metrics["critic_loss"], 3 * 1.9 ** 2, rtol=1e-5)
  np.testing.assert_allclose(after_critic.critic["w"], np.full(3, 1.9 - 0.1 * 0.01 * 2.0), rtol=1e-5)
  assert float(critic_metrics["draw"]) != float(gen_metrics["draw"])


def _setup(**overrides):
  generator, gen_params = tiny_model(seed=20, linear_proj=True)
  teacher, teacher_params = tiny_model(seed=21)
  critic, critic_params = tiny_model(seed=22)
  vae, vae_params = _vae(generator.config.in_dim)
  setup = DmdSetup(generator=generator, teacher=teacher, critic=critic, stream=HYBRID, latent_hw=LATENT_HW,
                   min_chunks=2, max_chunks=3, loss_frames=2, vae=vae, regulariser_weight=0.05, regulariser_steps=2,
                   **overrides)
  frozen = {"teacher": teacher_params, "critic": critic_params, "vae": vae_params,
            "negative_context": context(teacher, seed=23, batch=1)}
  return setup, random_linear_proj(gen_params, seed=24), frozen


def _rng_with_plan(setup, num_chunks, exit_step):
  """A step key whose rollout plan is (num_chunks, exit_step); generator_loss draws the plan from the first
  of three keys split from its rng (the metrics below confirm what it drew)."""
  for seed in range(1000):
    rng = jax.random.key(seed)
    plan = draw_rollout_plan(jax.random.split(rng, 3)[0], min_chunks=setup.min_chunks, max_chunks=setup.max_chunks,
                             num_steps=len(setup.stream.denoising_steps))
    if (int(plan[0]), int(plan[1])) == (num_chunks, exit_step):
      return rng
  raise AssertionError("no such plan in 1000 keys")


def test_generator_loss_trains_the_generator_only_and_records_equal_online():
  setup, gen_params, frozen = _setup()
  records = dataclasses.replace(setup, regulariser_source="records")
  ctx = context(setup.generator, seed=25, batch=2)
  keys = jax.random.split(jax.random.key(26), 2)
  rng = _rng_with_plan(setup, num_chunks=3, exit_step=0)   # long rollout (VAE re-encode), regulariser on

  @jax.jit
  def run(gen_params, frozen):
    batch = {"context": ctx, "noise_key": jax.random.key_data(keys)}
    (loss, metrics), grads = jax.value_and_grad(lambda g, f: generator_loss(g, f, batch, rng, setup=setup),
                                                argnums=(0, 1), has_aux=True)(gen_params, frozen)
    target = teacher_rollout_fn(setup.teacher, frozen["teacher"],
                                window_noise(keys, setup.stream, loss_frames=2, latent_hw=LATENT_HW,
                                             channels=setup.generator.config.in_dim),
                                ctx, frozen["negative_context"], num_steps=2, shift=5.0, guidance=3.5)()
    from_records, _ = generator_loss(gen_params, frozen, {**batch, "teacher_latents": target}, rng, setup=records)
    critic_frozen = {"generator": gen_params, "vae": frozen["vae"]}
    (_, critic_metrics), critic_grads = jax.value_and_grad(
        lambda c, f: critic_loss(c, f, {"context": ctx}, rng, setup=setup), argnums=(0, 1),
        has_aux=True)(frozen["critic"], critic_frozen)
    return loss, metrics, grads, from_records, critic_metrics, critic_grads

  loss, metrics, (g_gen, g_frozen), from_records, critic_metrics, (g_critic, g_critic_frozen) = run(gen_params, frozen)
  assert (float(metrics["rollout_chunks"]), float(metrics["exit_step"]), float(metrics["regulariser_active"])) == \
      (3.0, 0.0, 1.0)
  assert float(metrics["regulariser_loss"]) > 0 and np.isfinite(float(loss))
  for name, tree in g_frozen.items():
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(tree)), name
  assert float(jnp.max(jnp.abs(g_gen["head"]["head"]["weight"]))) > 0
  np.testing.assert_allclose(from_records, loss, rtol=1e-5)
  assert float(critic_metrics["critic_rollout_chunks"]) == 3.0   # the same plan: it drew from the same key
  for name, tree in g_critic_frozen.items():
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(tree)), name
  assert float(jnp.max(jnp.abs(g_critic["head"]["head"]["weight"]))) > 0


def test_a_given_exit_step_replaces_the_drawn_one():
  """generator_loss / critic_loss(exit_step=k), as bench_dmd_breakdown times each exit step in one program: the
  rollout exits at k whatever the key draws (the regulariser follows: active only at 0), and k equal to the drawn
  step gives the trainer's numbers exactly."""
  setup, gen_params, frozen = _setup()
  ctx = context(setup.generator, seed=27, batch=2)
  batch = {"context": ctx, "noise_key": jax.random.key_data(jax.random.split(jax.random.key(28), 2))}
  rng = _rng_with_plan(setup, num_chunks=2, exit_step=0)
  critic_frozen = {"generator": gen_params, "vae": frozen["vae"]}

  @jax.jit
  def run(exit_step):
    generator = generator_loss(gen_params, frozen, batch, rng, setup=setup, exit_step=exit_step)
    critic = critic_loss(frozen["critic"], critic_frozen, {"context": ctx}, rng, setup=setup, exit_step=exit_step)
    return generator, critic

  drawn_generator, drawn_critic = jax.jit(lambda: (generator_loss(gen_params, frozen, batch, rng, setup=setup),
                                                   critic_loss(frozen["critic"], critic_frozen, {"context": ctx}, rng,
                                                               setup=setup)))()
  for k in (0, 2):
    (g_loss, g_metrics), (c_loss, c_metrics) = run(jnp.int32(k))
    assert float(g_metrics["exit_step"]) == k and float(c_metrics["critic_exit_step"]) == k
    assert float(g_metrics["regulariser_active"]) == (1.0 if k == 0 else 0.0)
    if k == 0:
      assert float(g_loss) == float(drawn_generator[0]) and float(c_loss) == float(drawn_critic[0])
    else:
      assert float(g_loss) != float(drawn_generator[0])
