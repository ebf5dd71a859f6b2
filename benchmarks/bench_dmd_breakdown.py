"""Where a DMD training step's time goes (issue 11): the generator and the critic update cut into their parts.

  PYTHONUNBUFFERED=1 python -m benchmarks.bench_dmd_breakdown --phase=2 --repeats=3

Runtime: 6 minutes on one H200 with `--exit_steps=0,3` (docs/benchmarks.md, 2026-11-27), nearly 4 of them
compiling nine programs (the two value_and_grad ones take longest, 46-58 s each); each further exit step adds
about 1.5 minutes, so all four only just fit the 10-minute limit of one call.
Each part prints its median as it finishes, so a cut-off run still shows the parts done. On the CPU,
`--preset=tiny --latent_hw=8,8 --text_len=16 --remat=none` runs it in 1.5-2.5 minutes on 2 cores, nearly all of
it compiling (its times are noise at that size: it shows that the script runs and what it prints).

The setting of benchmarks/dmd_full_size.py (the trainer's full-size DMD stage on random weights: 1.3B
generator, critic and teacher stand-in, 21-frame rollouts at 60x104, batch 1; phase 2 by default). Each part
below is jitted on its own, called once untimed (its compile), then timed `--repeats` times to
`block_until_ready` (the median is reported). The parts are the trainer's own functions; the exit step is an
argument of each compiled program (traced, as in the trainer, where it is drawn inside the step), fixed per
call through the losses' `exit_step`:

  generator update, per exit step e:
    rollout          losses/generator.generator_rollout without gradient: the generator's forwards (steps
                     0..e on every chunk) and its cache writes, from the float32 masters' compute copy;
    loss forward     losses/generator.generator_loss: rollout + the teacher's CFG x0 + the critic's x0 + the
                     DMD loss (+ the regulariser in phase 2), no gradient;
    value_and_grad   jax.value_and_grad of it with respect to the masters, as training/steps.py's update;
    backward         value_and_grad - loss forward (remat's recomputation of the window's exit forwards
                     included);
  teacher CFG x0     losses/scores.teacher_x0_fn on a 21-frame latent (conditional and negative-prompt
                     passes batched into one forward of batch 2, and the two prompts' text K/V);
  critic x0          losses/scores.conditional_x0_fn on the critic's compute copy (DMD's fake score);
  other              loss forward - rollout - teacher CFG x0 - critic x0 (noise, DMD and regulariser terms);
  optimiser + EMA    the generator's AdamW step and its EMA on the 1.3B float32 tree (buffers donated);
  update             value_and_grad + optimiser + EMA: the denominator of the shares.
  critic update, per exit step e: its loss (losses/critic_step.critic_loss: the same rollout, then the
    critic's x0 and the flow-matching loss), value_and_grad, backward, the critic's AdamW step (no EMA), and
    update = value_and_grad + optimiser.

Rows without an exit step give their share as a range over the timed exit steps. benchmarks/bench_dmd_step.py
times the fused updates (the trainer's jitted steps, which also cast the other network to its compute copy);
the difference from the update rows here is what fusing the parts into one program saves or costs.
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags

from benchmarks import dmd_full_size
from hybrid_forcing_jax import cli
from hybrid_forcing_jax.training import optim
from hybrid_forcing_jax.training.losses.critic_step import critic_loss
from hybrid_forcing_jax.training.losses.generator import generator_loss, generator_rollout
from hybrid_forcing_jax.training.losses.scores import conditional_x0_fn, teacher_x0_fn

FLAGS = flags.FLAGS
flags.DEFINE_integer("repeats", 3, "Timed calls of each part per exit step (after one untimed call per part)")
flags.DEFINE_list("exit_steps", None, "Exit steps to time (default: every step of the stream's schedule)")

EMA_DECAY = 0.99
GRADIENT = 1e-3   # the optimiser's stand-in gradient: its work is elementwise, so the values do not change its time


class _Timer:
  """Median wall time of repeated calls; the first call of each part (compile + run) is untimed and kept."""

  def __init__(self, repeats: int):
    self.repeats = repeats
    self.first_call_s = {}

  def __call__(self, part: str, call, exit_step=None) -> float:
    """call: () -> output (a pytree of arrays, waited for). -> median milliseconds."""
    if part not in self.first_call_s:
      t0 = time.perf_counter()
      jax.block_until_ready(call())
      self.first_call_s[part] = time.perf_counter() - t0
    times = []
    for _ in range(self.repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(call())
      times.append(time.perf_counter() - t0)
    ms = 1000 * float(np.median(times))
    print(f"  {part}{'' if exit_step is None else f' (exit step {exit_step})'}: {ms:.1f} ms", flush=True)
    return ms


def _exit_steps(num_steps: int) -> list[int]:
  if FLAGS.exit_steps is None:
    return list(range(num_steps))
  try:
    steps = [int(e) for e in FLAGS.exit_steps]
  except ValueError:
    steps = [-1]
  if not steps or not all(0 <= e < num_steps for e in steps):
    raise cli.BadInput(f"--exit_steps: each must be an integer in [0, {num_steps}) (the stream's schedule), "
                       f"got {','.join(FLAGS.exit_steps)!r}")
  return steps


def _loss_parts(timer, role: str, loss, masters, compute_dtype, frozen, batch, exit_steps):
  """{"loss forward" / "value_and_grad": {exit step: ms}} of loss(params, frozen, batch, rng, exit_step=)
  on the compute copy of `masters`, differentiated as training/steps.py's update does (with respect to
  the masters, through the cast). Every array is an argument of the jitted programs, none a constant."""
  def of_masters(m, f, b, e):
    return loss(optim.cast_for_compute(m, compute_dtype), f, b, jax.random.key(100), exit_step=e)

  parts = {"loss forward": jax.jit(of_masters),
           "value_and_grad": jax.jit(lambda m, f, b, e: jax.value_and_grad(
               lambda p: of_masters(p, f, b, e), has_aux=True)(m))}
  return {part: {e: timer(f"{role} {part}", lambda: fn(masters, frozen, batch, np.int32(e)), e)
                 for e in exit_steps}
          for part, fn in parts.items()}


def _optimiser_ms(timer, part: str, optimizer, masters, opt_state, ema=None):
  """-> (ms, (masters, opt_state, ema)): the optimiser step of training/steps.py's update (after its
  value_and_grad) and, with `ema`, the generator's EMA, at grad_accum 1, its buffers donated as in the
  trainer's jitted step; each timed call runs on the previous one's output, which comes back."""
  def update(trees, grads):
    masters, opt_state, ema = trees
    updates, opt_state = optimizer.update(grads, opt_state, masters)
    masters = optax.apply_updates(masters, updates)
    return masters, opt_state, None if ema is None else optim.ema_update(ema, masters, 0, EMA_DECAY, 0)

  step = jax.jit(update, donate_argnums=0)
  grads = jax.tree.map(lambda p: jnp.full_like(p, GRADIENT), masters)
  held = [(masters, opt_state, ema)]

  def call():
    held[0] = step(held[0], grads)
    return held[0]

  return timer(part, call), held[0]


def _score_parts(timer, setup, frozen, batch, critic_compute):
  """{"teacher CFG x0", "critic x0": ms}: DMD's real and fake scores on a 21-frame x_t."""
  shape = (1, setup.loss_frames) + setup.latent_hw + (setup.generator.config.in_dim,)
  x_t = jax.random.normal(jax.random.key(101), shape, jnp.float32)
  t = jnp.full(shape[:2], 500.0, jnp.float32)
  teacher = jax.jit(lambda p, c, n, x, s: teacher_x0_fn(setup.teacher, p, c, n, setup.guidance)(x, s))
  critic = jax.jit(lambda p, c, x, s: conditional_x0_fn(setup.critic, p, c)(x, s))
  return {"teacher CFG x0": timer("teacher CFG x0", lambda: teacher(frozen["teacher"], batch["context"],
                                                                      frozen["negative_context"], x_t, t)),
          "critic x0": timer("critic x0", lambda: critic(critic_compute, batch["context"], x_t, t))}


def _rollout_ms(timer, setup, masters, compute_dtype, frozen, batch, exit_steps):
  """{exit step: ms} of the generator's rollout without gradient (the critic's rollout, and the
  generator's forwards inside its own loss), from the masters' compute copy."""
  def video(m, f, b, e):
    return generator_rollout(setup, optim.cast_for_compute(m, compute_dtype), f, b["context"], jax.random.key(100),
                             jax.random.wrap_key_data(b["noise_key"]), grad=False, exit_step=e).video

  rollout = jax.jit(video)
  return {e: timer("rollout", lambda: rollout(masters, frozen, batch, np.int32(e)), e) for e in exit_steps}


def _update_rows(rollout, losses, scores, optimiser_part: str, optimiser_ms: float):
  """-> (rows [(part, ms or {exit step: ms})], {exit step: the update's ms}) of one update, its parts in
  the order they run."""
  forward, value_and_grad = losses["loss forward"], losses["value_and_grad"]
  update = {e: value_and_grad[e] + optimiser_ms for e in value_and_grad}
  rows = [("rollout", rollout), *scores.items(),
          ("other (loss forward - the parts above)",
           {e: forward[e] - rollout[e] - sum(scores.values()) for e in forward}),
          ("loss forward", forward),
          ("backward (value_and_grad - loss forward)", {e: value_and_grad[e] - forward[e] for e in forward}),
          ("value_and_grad", value_and_grad), (optimiser_part, optimiser_ms),
          (f"**update** (value_and_grad + {optimiser_part})", update)]
  return rows, update


def _print_rows(name: str, rows, update) -> None:
  for part, ms in rows:
    if isinstance(ms, dict):
      for e, v in ms.items():
        print(f"| {name} | {part} | {e} | {v:.1f} | {100 * v / update[e]:.1f}% |")
    else:
      shares = [100 * ms / u for u in update.values()]
      print(f"| {name} | {part} | all | {ms:.1f} | {min(shares):.1f}-{max(shares):.1f}% |")


def main(argv):
  del argv
  if FLAGS.repeats < 1:
    raise cli.BadInput(f"--repeats must be >= 1, got {FLAGS.repeats}")
  if dmd_full_size.mesh_shape() != (1, 1):
    raise cli.BadInput(f"--mesh={','.join(FLAGS.mesh)}: bench_dmd_breakdown times its parts on one device "
                       "(--mesh=1,1); bench_dmd_step times the updates on a mesh")
  exit_steps = _exit_steps(len(dmd_full_size.stream_config().denoising_steps))
  bench = dmd_full_size.build()
  setup, state, batch = bench.setup, bench.state, bench.batch
  timer = _Timer(FLAGS.repeats)

  print(f"phase {FLAGS.phase}: generator update", flush=True)
  critic_compute = optim.cast_for_compute(state.critic, bench.critic_dtype)
  frozen = {**bench.frozen, "critic": critic_compute}
  rollout = _rollout_ms(timer, setup, state.params, bench.generator_dtype, frozen, batch, exit_steps)
  generator = _loss_parts(timer, "generator", functools.partial(generator_loss, setup=setup), state.params,
                          bench.generator_dtype, frozen, batch, exit_steps)
  scores = _score_parts(timer, setup, frozen, batch, critic_compute)
  del frozen, critic_compute
  generator_optimiser, (params, opt_state, ema) = _optimiser_ms(timer, "generator optimiser + EMA", bench.optimizer,
                                                                state.params, state.opt_state, state.ema)
  state = state.replace(params=params, opt_state=opt_state, ema=ema)

  print("critic update", flush=True)
  frozen = {**bench.frozen, "generator": optim.cast_for_compute(state.params, bench.generator_dtype)}
  critic = _loss_parts(timer, "critic", functools.partial(critic_loss, setup=setup), state.critic,
                       bench.critic_dtype, frozen, {"context": batch["context"]}, exit_steps)
  critic_optimiser, _ = _optimiser_ms(timer, "critic optimiser", bench.critic_optimizer, state.critic,
                                      state.critic_opt_state)

  print(f"\n{dmd_full_size.setting(setup)}, median of {FLAGS.repeats} calls\n")
  print("| update | part | exit step | median ms | share of the update |")
  print("| --- | --- | --- | --- | --- |")
  _print_rows("generator", *_update_rows(rollout, generator, scores, "optimiser + EMA", generator_optimiser))
  _print_rows("critic", *_update_rows(rollout, critic, {"critic x0": scores["critic x0"]}, "optimiser",
                                      critic_optimiser))
  print("\nfirst calls (compile + run): "
        + ", ".join(f"{part} {s:.1f} s" for part, s in timer.first_call_s.items()))
  print(f"peak device memory: {dmd_full_size.peak_gib():.2f} GiB")


if __name__ == "__main__":
  cli.run(main, "bench_dmd_breakdown")
