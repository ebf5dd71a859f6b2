"""One DMD training step at full size with random weights: the generator update and the critic update.

  PYTHONUNBUFFERED=1 python -m benchmarks.bench_dmd_step [--phase=2] [--generator_steps=8] [--critic_steps=6]

The trainer's own steps (training/steps.make_dmd_steps with losses/generator.py and critic_step.py, the
rollout of training/rollout.py on the streaming sampler) on one device: Wan-1.3B generator and critic
(float32 masters, AdamW, EMA, bf16 compute, full-block remat), the 1.3B teacher as a frozen bf16 stand-in
for the 14B, batch 1, 512 text tokens, 21-frame (7-chunk) rollouts at 60x104 latents (832x480).
Phase 2 = configs/hybrid.py's stream (sink 3, window 9, linear memory, top-20% block-sparse, relative RoPE);
phase 1 = configs/self_forcing.py's (dense). The regulariser reads its teacher target from the batch
("records": make_teacher_rollouts precomputes it), so its online 25-step teacher rollout is not in the
time. Each update's exit step is drawn inside the step; the table groups the timed steps by it.
"""
from __future__ import annotations

import collections
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from configs import hybrid, self_forcing
from hybrid_forcing_jax import dit
from hybrid_forcing_jax.streaming.config import StreamConfig
from hybrid_forcing_jax.training import builders, optim, steps
from hybrid_forcing_jax.training.dmd_setup import DmdSetup
from hybrid_forcing_jax.training.losses.critic_step import critic_loss
from hybrid_forcing_jax.training.losses.generator import generator_loss
from hybrid_forcing_jax.training.state import TrainState

FLAGS = flags.FLAGS
flags.DEFINE_enum("phase", "2", ["1", "2"], "1: dense Self-Forcing stream; 2: hybrid stream + regulariser")
flags.DEFINE_integer("generator_steps", 8, "Timed generator updates (after one warm-up)")
flags.DEFINE_integer("critic_steps", 6, "Timed critic updates (after one warm-up)")
flags.DEFINE_string("remat", "full", "Remat policy of generator and critic")
flags.DEFINE_list("latent_hw", ["60", "104"], "Latent height, width")
flags.DEFINE_string("preset", "wan_1_3b", "Architecture of generator, critic and teacher")
flags.DEFINE_integer("text_len", 512, "Text tokens")

LOSS_FRAMES = 21


def _model_cfg(remat: str, linear_proj: bool):
  return ml_collections.ConfigDict(dict(preset=FLAGS.preset, overrides=dict(linear_proj=linear_proj), checkpoint="",
                                        dtype="bfloat16", remat_policy=remat, attention_backend="auto"))


def _peak_gib() -> float:
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use", 0) / 2**30


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
  phase2 = FLAGS.phase == "2"
  stream = StreamConfig.from_dict(dict((hybrid if phase2 else self_forcing).get_config().stream))
  latent_hw = tuple(int(x) for x in FLAGS.latent_hw)
  model, params = builders.build_dit(_model_cfg(FLAGS.remat, phase2), seed=0, param_dtype=jnp.float32)
  critic, critic_params = builders.build_dit(_model_cfg(FLAGS.remat, False), seed=1, param_dtype=jnp.float32)
  teacher, teacher_params = builders.build_dit(_model_cfg("none", False), seed=2)
  window = LOSS_FRAMES // stream.chunk_frames
  setup = DmdSetup(generator=model, teacher=teacher, critic=critic, stream=stream, latent_hw=latent_hw,
                   min_chunks=window, max_chunks=window, loss_frames=LOSS_FRAMES,
                   regulariser_weight=0.05 if phase2 else 0.0, regulariser_source="records")
  optimizer = optim.make_optimizer(ml_collections.ConfigDict(dict(
      lr=1.5e-6, b1=0.0, b2=0.999, weight_decay=0.01, eps=1e-8, clip_norm=10.0, warmup_steps=0, grad_accum=1)))
  critic_optimizer = optim.make_optimizer(ml_collections.ConfigDict(dict(
      lr=2e-7, b1=0.0, b2=0.999, weight_decay=0.01, eps=1e-8, clip_norm=10.0, warmup_steps=0, grad_accum=1)))
  generator_step, critic_step = steps.make_dmd_steps(
      lambda *a: generator_loss(*a, setup=setup), lambda *a: critic_loss(*a, setup=setup), optimizer,
      critic_optimizer, ema_decay=0.99, ema_start=0, generator_dtype=dit.param_shapes(model.config, model.param_dtype),
      critic_dtype=dit.param_shapes(critic.config, critic.param_dtype))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                     ema=jax.tree.map(jnp.copy, params), rng=jax.random.key_data(jax.random.key(0)),
                     critic=critic_params, critic_opt_state=critic_optimizer.init(critic_params))
  del params, critic_params
  k = jax.random.split(jax.random.key(3), 4)
  c = model.config
  batch = dict(context=jax.random.normal(k[0], (1, FLAGS.text_len, c.text_dim), jnp.bfloat16),
               noise_key=jax.random.key_data(jax.random.split(k[1], 1)),
               teacher_latents=jax.random.normal(k[2], (1, LOSS_FRAMES) + latent_hw + (c.in_dim,), jnp.float32))
  frozen = {"teacher": teacher_params,
            "negative_context": jax.random.normal(k[3], (1, FLAGS.text_len, c.text_dim), jnp.bfloat16)}
  gen_jit = jax.jit(generator_step, donate_argnums=0)
  critic_jit = jax.jit(critic_step, donate_argnums=0)
  print(f"phase {FLAGS.phase}: generator steps", flush=True)
  state, gen_times, gen_first = _timed(gen_jit, state, batch, frozen,
                                       [jax.random.key(100 + i) for i in range(FLAGS.generator_steps + 1)], "exit_step")
  gen_peak = _peak_gib()
  print("critic steps", flush=True)
  critic_batch = {"context": batch["context"]}
  state, critic_times, critic_first = _timed(critic_jit, state, critic_batch, frozen,
                                             [jax.random.key(200 + i) for i in range(FLAGS.critic_steps + 1)],
                                             "critic_exit_step")
  peak = _peak_gib()
  gen_all = [t for ts in gen_times.values() for t in ts]
  critic_all = [t for ts in critic_times.values() for t in ts]
  per_step = np.mean(critic_all) + np.mean(gen_all) / 5
  print(f"\nphase {FLAGS.phase} on {jax.devices()[0].device_kind}, {FLAGS.preset}, 21 frames at {latent_hw}, "
        f"remat {FLAGS.remat}")
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
