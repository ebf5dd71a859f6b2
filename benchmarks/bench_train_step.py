"""Training cost at full size with random weights: the ODE-init step and ODE-pair generation.

  PYTHONUNBUFFERED=1 python -m benchmarks.bench_train_step [--remat=none,full,dots_saveable] [--iters=5]
      [--mesh=1x1] [--pairs] [--results_jsonl=PATH]

Rows, each measured in a subprocess of its own (a fresh peak-memory counter; an out-of-memory row
does not stop the others):
  * ode_init step (remat policy, mesh data x fsdp): the trainer's own step (training/steps.py,
    losses/ode.py, optim.py, sharding.py) on Wan-1.3B, 21 latent frames at 60x104 (832x480), 5 trajectory
    latents per example, batch 1 per device, 512 text tokens; fp32 masters + AdamW + EMA, bf16 compute.
    Median wall time of `iters` steps after 2 warm-up steps; peak device memory per GPU.
  * ode pairs (--pairs): make_ode_pairs' teacher sampler (training/teacher.py), 48 Euler steps with
    x0-space CFG (cond and uncond batched: 96 forwards of 32,760 tokens), 1.3B teacher, 1 prompt per
    device: seconds per prompt.
The table is printed last; --results_jsonl=PATH also appends each ode_init row to PATH as one JSON line
(benchmarks/bench_scaling.py sweeps meshes with it).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

from benchmarks.failures import failure_line

FLAGS = flags.FLAGS
flags.DEFINE_list("remat", ["full", "dots_saveable", "none"], "Remat policies of the ODE-init rows")
flags.DEFINE_list("mesh", ["1x1"], "Meshes 'DATAxFSDP' of the ODE-init rows (-1 = all devices)")
flags.DEFINE_integer("iters", 5, "Timed steps per row")
flags.DEFINE_integer("frames", 21, "Latent frames")
flags.DEFINE_string("preset", "wan_1_3b", "Generator / teacher architecture")
flags.DEFINE_list("latent_hw", ["60", "104"], "Latent height, width (832x480 video: 60,104)")
flags.DEFINE_boolean("pairs", True, "Also time ODE-pair generation")
flags.DEFINE_string("results_jsonl", None, "Append each ode_init row's numbers to this file as one JSON line")
flags.DEFINE_string("row", None, "Internal: run one row (JSON) in this process and print its result")

TEXT_LEN = 512


def ode_settings(remat: str) -> dict:
  """What an ode_init row times besides its mesh and the number of timed steps: its results line's "setting",
  by which bench_scaling.py knows a mesh it has run and which rows it compares."""
  return dict(preset=FLAGS.preset, remat=remat, frames=FLAGS.frames, latent_hw=[int(x) for x in FLAGS.latent_hw],
              text_len=TEXT_LEN)


def _model_cfg(remat: str):
  import ml_collections
  return ml_collections.ConfigDict(dict(preset=FLAGS.preset, overrides={}, checkpoint="", dtype="bfloat16",
                                        remat_policy=remat, attention_backend="auto"))


def _peak_gib() -> float:
  import jax
  stats = [d.memory_stats() or {} for d in jax.local_devices()]
  return max(s.get("peak_bytes_in_use", 0) for s in stats) / 2**30


def ode_step_row(remat: str, mesh_text: str) -> dict:
  import jax
  import jax.numpy as jnp
  from configs import ode_init
  from hybrid_forcing_jax import dit
  from hybrid_forcing_jax.training import builders, optim, sharding, steps
  from hybrid_forcing_jax.training.losses.ode import ode_regression_loss
  from hybrid_forcing_jax.training.state import TrainState
  import functools

  data, fsdp = (int(x) for x in mesh_text.split("x"))
  mesh = sharding.make_mesh(data, fsdp, jax.devices()[:data * fsdp])
  n = mesh.devices.size
  cfg = ode_init.get_config()
  model, params = builders.build_dit(_model_cfg(remat), seed=0, param_dtype=jnp.float32)
  wan = model.config
  stream_ts = (1000.0, 937.5, 833.3333, 625.0)
  loss = functools.partial(ode_regression_loss, model=model, chunk_frames=3, denoising_timesteps=stream_ts)
  optimizer = optim.make_optimizer(cfg.optim)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                     ema=jax.tree.map(jnp.copy, params), rng=jax.random.key_data(jax.random.key(0)))
  shardings = sharding.train_state_shardings(mesh, optimizer, state)
  state = jax.device_put(state, shardings)
  del params
  batch_sharding = sharding.batch_sharding(mesh)
  step = steps.jit_train_step(
      steps.make_train_step(loss, optimizer, ema_decay=0.99, ema_start=0,
                            compute_dtype=dit.param_shapes(wan, model.param_dtype)),
      shardings, batch_sharding)
  k1, k2 = jax.random.split(jax.random.key(1))
  batch = dict(
      latents=jax.random.normal(k1, (n, 5, FLAGS.frames) + tuple(int(x) for x in FLAGS.latent_hw) + (wan.in_dim,), jnp.float32),
      context=jax.random.normal(k2, (n, TEXT_LEN, wan.text_dim), jnp.bfloat16))
  batch = jax.device_put(batch, batch_sharding)
  key = jax.random.key(2)
  t0 = time.perf_counter()
  state, m = step(state, batch, key)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  state, m = step(state, batch, key)
  jax.block_until_ready(m)
  times = []
  for _ in range(FLAGS.iters):
    t0 = time.perf_counter()
    state, m = step(state, batch, key)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  return dict(row=f"ode_init step remat={remat} mesh={data}x{fsdp}", devices=n, ms=1e3 * float(np.median(times)),
              samples_per_s=n / float(np.median(times)), peak_gib=_peak_gib(), first_call_s=compile_s,
              loss=float(m["loss"]), device_kind=jax.devices()[0].device_kind, mesh_data=data, mesh_fsdp=fsdp)


def ode_pairs_row() -> dict:
  import jax
  import jax.numpy as jnp
  from hybrid_forcing_jax.training import builders
  from hybrid_forcing_jax.training.guidance import text_kv
  from hybrid_forcing_jax.training.teacher import euler_trajectory

  model, params = builders.build_dit(_model_cfg("none"), seed=0)
  wan = model.config
  n = 1
  keys = jax.random.split(jax.random.key(3), 3)
  noise = jax.random.normal(keys[0], (n, FLAGS.frames) + tuple(int(x) for x in FLAGS.latent_hw) + (wan.in_dim,), jnp.float32)
  cond = jax.random.normal(keys[1], (n, TEXT_LEN, wan.text_dim), jnp.bfloat16)
  uncond = jax.random.normal(keys[2], (1, TEXT_LEN, wan.text_dim), jnp.bfloat16)

  @jax.jit
  def sample(params, noise, cond, uncond):
    return euler_trajectory(model, params, noise, text_kv(model, params, cond), text_kv(model, params, uncond),
                            num_steps=48, shift=5.0, guidance=6.0, keep=(0, 12, 24, 36, 48))

  t0 = time.perf_counter()
  jax.block_until_ready(sample(params, noise, cond, uncond))
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  out = jax.block_until_ready(sample(params, noise, cond, uncond))
  dt = time.perf_counter() - t0
  assert np.isfinite(np.asarray(out[:, -1], np.float32)).all()
  return dict(row=f"ode pairs 48 steps cfg, {n} prompt(s)", devices=n, ms=1e3 * dt, s_per_prompt=dt / n,
              peak_gib=_peak_gib(), first_call_s=first)


def run_row(spec: dict) -> dict:
  argv = [sys.executable, "-m", "benchmarks.bench_train_step", f"--row={json.dumps(spec)}",
          f"--iters={FLAGS.iters}", f"--frames={FLAGS.frames}", f"--preset={FLAGS.preset}", f"--latent_hw={','.join(FLAGS.latent_hw)}"]
  proc = subprocess.run(argv, capture_output=True, text=True)
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  return dict(row=spec, error=failure_line(proc.stderr or proc.stdout, proc.returncode))


def main(argv):
  del argv
  if FLAGS.row:
    spec = json.loads(FLAGS.row)
    result = ode_pairs_row() if spec["kind"] == "pairs" else ode_step_row(spec["remat"], spec["mesh"])
    print("RESULT " + json.dumps(result), flush=True)
    return
  specs = [dict(kind="ode", remat=r, mesh=m) for m in FLAGS.mesh for r in FLAGS.remat]
  if FLAGS.pairs:
    specs.append(dict(kind="pairs"))
  results = []
  for spec in specs:
    r = run_row(spec)
    print(json.dumps(r), flush=True)
    results.append(r)
    if FLAGS.results_jsonl and spec["kind"] == "ode" and "error" not in r:
      _append_results(spec["remat"], r)
  print(f"\n{'row':48s} {'devices':>7s} {'ms':>9s} {'samples/s':>9s} {'peak GiB':>9s} {'first call s':>12s}")
  for r in results:
    if "error" in r:
      print(f"{json.dumps(r['row']):48s} error: {r['error']}")
      continue
    sps = r.get("samples_per_s", 1.0 / r["s_per_prompt"] if "s_per_prompt" in r else 0.0)
    print(f"{r['row']:48s} {r['devices']:7d} {r['ms']:9.1f} {sps:9.3f} {r['peak_gib']:9.2f} {r['first_call_s']:12.1f}")


def _append_results(remat: str, r: dict) -> None:
  """One JSON line for an ode_init row: the median step takes the global batch (1 per device)."""
  n = r["devices"]
  line = dict(bench="ode_init_step", device_kind=r["device_kind"], devices=n, mesh_data=r["mesh_data"],
              mesh_fsdp=r["mesh_fsdp"], global_batch=n, setting=ode_settings(remat), per_step_s=r["ms"] / 1e3,
              steps=FLAGS.iters, samples_per_s=r["samples_per_s"], samples_per_s_per_device=r["samples_per_s"] / n,
              peak_gib_per_device_max=r["peak_gib"])
  with open(FLAGS.results_jsonl, "a") as f:
    f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
  app.run(main)
