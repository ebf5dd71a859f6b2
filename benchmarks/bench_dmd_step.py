"""One DMD training step at full size with random weights: the generator update and the critic update.

  PYTHONUNBUFFERED=1 python -m benchmarks.bench_dmd_step [--phase=2] [--generator_steps=8] [--critic_steps=6]
      [--critic_remat=attention_saveable] [--teacher_preset=wan_14b --mesh=1,2] [--results_jsonl=PATH]

Issue 11's step on two GPUs with the 14B teacher sharded (batch 1 per GPU):

  PYTHONUNBUFFERED=1 python -m benchmarks.bench_dmd_step --phase=2 --teacher_preset=wan_14b --mesh=1,2

The trainer's own steps (training/steps.make_dmd_steps with losses/generator.py and critic_step.py, the
rollout of training/rollout.py on the streaming sampler), jitted by steps.jit_train_step with the trainer's
shardings, in the setting of benchmarks/dmd_full_size.py (Wan-1.3B generator and critic, a teacher of
--teacher_preset, the 1.3B stand-in by default, batch 1 per device, 21-frame rollouts at 60x104; phase 2
with the regulariser's target from the batch) on the devices of --mesh. Each update's exit step is drawn
inside the step; the table groups the timed steps by it. Memory per device (the most of the mesh's devices
and each one): what the teacher and the train state hold there, each update's compiled program (XLA's
memory analysis: arguments + temporaries + outputs not donated-over, so generator and critic apart; the
measured peak only grows) and the measured peak after the generator steps and at the end.
benchmarks/bench_dmd_breakdown.py splits the updates into their parts (on one device).
--results_jsonl=PATH appends the run's numbers to PATH as one JSON line (benchmarks/bench_scaling.py sweeps
meshes with it).

Measured with the 2-GPU command on 2 H200s (docs/benchmarks.md): per GPU the 14B teacher holds 13.5 GiB, the
train state 18.5 GiB, and the generator update peaks at 59.9 GiB (it gathers the teacher a layer at a time), so
it fits two 80 GB H100s.
"""
from __future__ import annotations

import collections
import json
import os
import time

import jax
import numpy as np
from absl import flags

from benchmarks import dmd_full_size
from hybrid_forcing_jax import cli
from hybrid_forcing_jax.training import sharding, steps
from hybrid_forcing_jax.training.losses.critic_step import critic_loss
from hybrid_forcing_jax.training.losses.generator import generator_loss

FLAGS = flags.FLAGS
flags.DEFINE_integer("generator_steps", 8, "Timed generator updates (after one warm-up)")
flags.DEFINE_integer("critic_steps", 6, "Timed critic updates (after one warm-up)")
flags.DEFINE_string("results_jsonl", None, "Append the run's numbers to this file as one JSON line")


def settings() -> dict:
  """What was timed besides the mesh and the number of timed updates: the results line's "setting", by which
  bench_scaling.py knows a mesh it has run and which rows it compares."""
  return dict(phase=int(FLAGS.phase), preset=FLAGS.preset, teacher_preset=dmd_full_size.teacher_preset(),
              remat=FLAGS.remat, critic_remat=dmd_full_size.critic_remat(),
              latent_hw=[int(x) for x in FLAGS.latent_hw], text_len=FLAGS.text_len)


def _compiled(step, state, batch, key, frozen):
  """-> (step compiled for these arguments, compile seconds, GiB per device of XLA's memory analysis)."""
  t0 = time.perf_counter()
  compiled = step.lower(state, batch, key, frozen).compile()
  seconds = time.perf_counter() - t0
  m = compiled.memory_analysis()
  gib = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes) / 2**30
  return compiled, seconds, gib


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
  if FLAGS.results_jsonl and not os.path.isdir(os.path.dirname(os.path.abspath(FLAGS.results_jsonl))):
    raise cli.BadInput(f"--results_jsonl={FLAGS.results_jsonl}: its folder does not exist")
  bench = dmd_full_size.build()
  setup, devices = bench.setup, bench.mesh.local_devices
  held = {"teacher": dmd_full_size.gib_per_device(bench.frozen["teacher"], devices),
          "train state": dmd_full_size.gib_per_device(bench.state, devices)}
  weight, shape, shard = dmd_full_size.largest_split(bench.frozen["teacher"])
  print(f"teacher {dmd_full_size.teacher_preset()}: largest weight {weight} {shape} held as {shard} on device "
        f"{devices[0].id}; {sum(held['teacher']):.2f} GiB in all", flush=True)
  generator_step, critic_step = steps.make_dmd_steps(
      lambda *a: generator_loss(*a, setup=setup), lambda *a: critic_loss(*a, setup=setup), bench.optimizer,
      bench.critic_optimizer, ema_decay=0.99, ema_start=0, generator_dtype=bench.generator_dtype,
      critic_dtype=bench.critic_dtype)
  batch_sharding = sharding.batch_sharding(bench.mesh)
  gen_jit, critic_jit = (steps.jit_train_step(step, bench.state_shardings, batch_sharding, bench.frozen_shardings)
                         for step in (generator_step, critic_step))
  state, batch, frozen = bench.state, bench.batch, bench.frozen
  gen_keys = [jax.random.key(100 + i) for i in range(FLAGS.generator_steps + 1)]
  critic_keys = [jax.random.key(200 + i) for i in range(FLAGS.critic_steps + 1)]
  critic_batch = {"context": batch["context"]}

  print(f"phase {FLAGS.phase}: generator steps", flush=True)
  gen_jit, gen_compile, gen_program = _compiled(gen_jit, state, batch, gen_keys[0], frozen)
  state, gen_times, gen_first = _timed(gen_jit, state, batch, frozen, gen_keys, "exit_step")
  gen_peak = dmd_full_size.peak_gib_per_device(devices)
  print("critic steps", flush=True)
  critic_jit, critic_compile, critic_program = _compiled(critic_jit, state, critic_batch, critic_keys[0], frozen)
  state, critic_times, critic_first = _timed(critic_jit, state, critic_batch, frozen, critic_keys, "critic_exit_step")
  peak = dmd_full_size.peak_gib_per_device(devices)

  gen_all = [t for ts in gen_times.values() for t in ts]
  critic_all = [t for ts in critic_times.values() for t in ts]
  per_step = np.mean(critic_all) + np.mean(gen_all) / 5
  print(f"\n{dmd_full_size.setting(setup)}")
  print(f"{'update':10s} {'exit step':>9s} {'n':>3s} {'median s':>9s}")
  for name, times in (("generator", gen_times), ("critic", critic_times)):
    for e in sorted(times):
      print(f"{name:10s} {e:9d} {len(times[e]):3d} {np.median(times[e]):9.3f}")
    print(f"{name:10s} {'all':>9s} {len(sum(times.values(), [])):3d} {np.mean(sum(times.values(), [])):9.3f} (mean)")
  print(f"per step (one critic update + 1/5 of a generator update): {per_step:.3f} s")
  print(f"compile: generator {gen_compile:.1f} s, critic {critic_compile:.1f} s; first (untimed) calls: "
        f"generator {gen_first:.1f} s, critic {critic_first:.1f} s")
  rows = [(f"{role} held", gib) for role, gib in held.items()]
  rows += [("generator update program", [gen_program] * len(devices)),
           ("critic update program", [critic_program] * len(devices)),
           ("peak after generator steps", gen_peak), ("peak at the end", peak)]
  print(f"\n{'memory per device, GiB':28s} {'max':>7s}" + "".join(f" {'device ' + str(d.id):>9s}" for d in devices))
  for row, gib in rows:
    print(f"{row:28s} {max(gib):7.2f}" + "".join(f" {g:9.2f}" for g in gib))
  if FLAGS.results_jsonl:
    _append_results(gen_all, critic_all, per_step, global_batch=batch["context"].shape[0], peak=max(peak))


def _append_results(gen_all, critic_all, per_step, global_batch, peak):
  """One JSON line: the per-step time is the table's (one critic update + 1/5 of a generator update), each
  step takes the global batch; the peak is the end's, the most of the mesh's devices (0 on the CPU)."""
  data, fsdp = dmd_full_size.mesh_shape()
  line = dict(bench="dmd_step", device_kind=jax.devices()[0].device_kind, devices=data * fsdp, mesh_data=data,
              mesh_fsdp=fsdp, global_batch=global_batch, setting=settings(), generator_s=float(np.mean(gen_all)),
              critic_s=float(np.mean(critic_all)), generator_updates=len(gen_all), critic_updates=len(critic_all),
              per_step_s=float(per_step), samples_per_s=global_batch / per_step,
              samples_per_s_per_device=global_batch / per_step / (data * fsdp), peak_gib_per_device_max=peak)
  with open(FLAGS.results_jsonl, "a") as f:
    f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
  cli.run(main, "bench_dmd_step")
