"""One DMD training step at full size with random weights: the generator update and the critic update.

  PYTHONUNBUFFERED=1 python -m benchmarks.bench_dmd_step [--phase=2] [--generator_steps=8] [--critic_steps=6]

The trainer's own steps (training/steps.make_dmd_steps with losses/generator.py and critic_step.py, the
rollout of training/rollout.py on the streaming sampler) on one device, in the setting of
benchmarks/dmd_full_size.py (Wan-1.3B generator, critic and teacher stand-in, batch 1, 21-frame rollouts
at 60x104; phase 2 with the regulariser's target from the batch). Each update's exit step is drawn inside
the step; the table groups the timed steps by it. benchmarks/bench_dmd_breakdown.py splits the updates
into their parts.
"""
from __future__ import annotations

import collections
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks import dmd_full_size
from hybrid_forcing_jax.training import steps
from hybrid_forcing_jax.training.losses.critic_step import critic_loss
from hybrid_forcing_jax.training.losses.generator import generator_loss

FLAGS = flags.FLAGS
flags.DEFINE_integer("generator_steps", 8, "Timed generator updates (after one warm-up)")
flags.DEFINE_integer("critic_steps", 6, "Timed critic updates (after one warm-up)")


def _timed(step, state, batch, frozen, keys, exit_key):
  """Run step once per key (the first untimed); -> (state, {exit step: [seconds]}, first-call seconds)."""
  times = collections.defaultdict(list)
  first = None
  for i, key in enumerate(keys):
    t0 = time.perf_counter()
    state, metrics = step(state, batch, key, frozen)
    metrics = jax.device_get(metrics)
    dt = time.perf_counter() - t0
    if i == 0:
      first = dt
      continue
    times[int(metrics[exit_key])].append(dt)
    print(f"  {exit_key}={int(metrics[exit_key])} {dt:.3f} s", flush=True)
  return state, times, first


def main(argv):
  del argv
  bench = dmd_full_size.build()
  setup = bench.setup
  generator_step, critic_step = steps.make_dmd_steps(
      lambda *a: generator_loss(*a, setup=setup), lambda *a: critic_loss(*a, setup=setup), bench.optimizer,
      bench.critic_optimizer, ema_decay=0.99, ema_start=0, generator_dtype=bench.generator_dtype,
      critic_dtype=bench.critic_dtype)
  state, batch, frozen = bench.state, bench.batch, bench.frozen
  gen_jit = jax.jit(generator_step, donate_argnums=0)
  critic_jit = jax.jit(critic_step, donate_argnums=0)
  print(f"phase {FLAGS.phase}: generator steps", flush=True)
  state, gen_times, gen_first = _timed(gen_jit, state, batch, frozen,
                                       [jax.random.key(100 + i) for i in range(FLAGS.generator_steps + 1)], "exit_step")
  gen_peak = dmd_full_size.peak_gib()
  print("critic steps", flush=True)
  critic_batch = {"context": batch["context"]}
  state, critic_times, critic_first = _timed(critic_jit, state, critic_batch, frozen,
                                             [jax.random.key(200 + i) for i in range(FLAGS.critic_steps + 1)],
                                             "critic_exit_step")
  peak = dmd_full_size.peak_gib()
  gen_all = [t for ts in gen_times.values() for t in ts]
  critic_all = [t for ts in critic_times.values() for t in ts]
  per_step = np.mean(critic_all) + np.mean(gen_all) / 5
  print(f"\n{dmd_full_size.setting(setup)}")
  print(f"{'update':10s} {'exit step':>9s} {'n':>3s} {'median s':>9s}")
  for name, times in (("generator", gen_times), ("critic", critic_times)):
    for e in sorted(times):
      print(f"{name:10s} {e:9d} {len(times[e]):3d} {np.median(times[e]):9.3f}")
    print(f"{name:10s} {'all':>9s} {len(sum(times.values(), [])):3d} {np.mean(sum(times.values(), [])):9.3f} (mean)")
  print(f"first calls (compile + run): generator {gen_first:.1f} s, critic {critic_first:.1f} s")
  print(f"peak device memory: {gen_peak:.2f} GiB after the generator steps, {peak:.2f} GiB at the end")
  print(f"per step (one critic update + 1/5 of a generator update): {per_step:.3f} s")


if __name__ == "__main__":
  app.run(main)
