"""The DMD stage under sharding (issue 11, "the 14B sharded over the mesh"), on 8 simulated CPU devices:

  * the trainer's DMD parts (trainer.Job.build on configs/self_forcing.py:tiny: the real generator and
    critic losses through steps.make_dmd_steps, jitted with train_state_shardings and
    dmd_stage.frozen_shardings) give the same generator and critic losses and grad norms for STEPS
    (generator, critic) update pairs on one device and on a data 4 x fsdp 2 mesh;
  * there the frozen teacher's big weights are really split over fsdp, and so are the generator's and
    the critic's (the state), while the negative prompt stays whole;
  * every example draws rollout noise of its own (not the peers' same noise on every device, defect D3),
    the same on one device as on eight: the losses' per-example draw, one example per device.

  * issue 15's resume, in miniature: `train` on a data 2 x fsdp 4 mesh of 8 devices, killed (SIGKILL) once its
    first checkpoint is committed and run again with the same command, logs the uninterrupted run's losses.

Both meshes run in one subprocess (XLA_FLAGS=--xla_force_host_platform_device_count=8); tracing and
compiling the two updates once per mesh is most of the file's time (~60 s on the 2-core dev box; the
resume's three runs ~100 s more).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import jax
import numpy as np

from configs import self_forcing
from hybrid_forcing_jax.config import tiny_config
from hybrid_forcing_jax.training import sharding, trainer
from hybrid_forcing_jax.training.config import parse
from hybrid_forcing_jax.training.rollout import window_noise
from hybrid_forcing_jax.training.metrics import read_jsonl
from tests.test_train_dmd_run import SELF_FORCING, losses
from tests.train_fixtures import REPO, kill_after_checkpoint, train_command, write_tiny_dit

BATCH, STEPS = 8, 3
MEASURE = """
import json
import jax
from tests.test_train_dmd_sharding import measure
print(json.dumps({"devices": jax.device_count(), "1x1": measure(1, 1), "4x2": measure(4, 2)}))
"""


def build_config(folder: str):
  """configs/self_forcing.py:tiny with BATCH prompts, a generator update at every step, and tiny DiTs
  with random output heads (tests/train_fixtures.py) for all three networks, so that teacher and critic
  disagree and the DMD loss is not zero."""
  with open(os.path.join(folder, "prompts.txt"), "w") as f:
    f.write("".join(f"tiny prompt number {i}\n" for i in range(BATCH)))
  c = self_forcing.get_config("tiny")
  for seed, name in enumerate(("model", "teacher", "critic")):
    c[name].checkpoint = write_tiny_dit(os.path.join(folder, name), seed=seed)
  c.data.update(dict(prompts=os.path.join(folder, "prompts.txt"), batch_size=BATCH))
  c.text.cache_dir = os.path.join(folder, "text_cache")
  c.dmd.generator_every = 1
  return c


def train(run, mesh) -> dict:
  """STEPS (generator update, critic update) pairs on `mesh`, as trainer.Job.run calls them (each update
  on its own batches and its own key stream) -> their losses and grad norms, and the shard shapes of
  the q weights of the teacher, the generator and the critic."""
  parts = trainer.Job(run, workdir="", mesh=mesh).build()
  state, local_batch = parts.state, run.data.batch_size
  iterators = [trainer.batch_iterator(u.dataset, local_batch, num_workers=0) for u in parts.updates]
  base_key = jax.random.key(run.train.seed)
  out = {u.name: {"loss": [], "grad_norm": []} for u in parts.updates}
  for _ in range(STEPS):
    for i, (update, step_fn, it) in enumerate(zip(parts.updates, parts.step_fns, iterators)):
      batch = jax.make_array_from_process_local_data(parts.batch_sharding, next(it))
      state, metrics = step_fn(state, batch, jax.random.fold_in(base_key, i), parts.frozen)
      out[update.name]["loss"].append(float(metrics[f"{update.name}_loss"]))
      out[update.name]["grad_norm"].append(float(metrics[f"{update.name}_grad_norm"]))
  q = lambda params: list(params["blocks"]["self_attn"]["q"]["weight"].addressable_shards[0].data.shape)
  out["q_shard"] = {"teacher": q(parts.frozen["teacher"]), "generator": q(state.params), "critic": q(state.critic)}
  out["negative_context_shard"] = list(parts.frozen["negative_context"].addressable_shards[0].data.shape)
  out["steps"] = int(state.step)
  return out


def example_noise(run, mesh) -> dict:
  """The rollout noise of a batch, drawn as generator_loss and critic_loss draw it (one key per example
  split from the step key, rollout.window_noise from it) in one program over `mesh`, batch split over it."""
  def noise(rng):
    _, noise_key, _ = jax.random.split(rng, 3)
    return window_noise(jax.random.split(noise_key, BATCH), run.stream, loss_frames=run.data.num_frames,
                        latent_hw=run.data.latent_hw, channels=tiny_config().in_dim)

  out = jax.jit(noise, out_shardings=sharding.batch_sharding(mesh))(jax.random.key(7))
  return {"noise": np.asarray(out).tolist(), "devices": len({s.device for s in out.addressable_shards})}


def measure(data: int, fsdp: int) -> dict:
  """train and example_noise on a data x fsdp mesh of this process's first devices."""
  with tempfile.TemporaryDirectory() as folder:
    run = parse(build_config(folder))
    mesh = sharding.make_mesh(data, fsdp, devices=jax.devices()[:data * fsdp])
    return {"train": train(run, mesh), "noise": example_noise(run, mesh)}


def test_dmd_updates_give_the_one_device_numbers_on_eight_devices():
  # XLA's cheapest CPU code generation: compiling the updates' programs is most of the time.
  flags = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
  done = subprocess.run([sys.executable, "-c", MEASURE], capture_output=True, text=True, cwd=REPO, timeout=600,
                        env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags})
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert result["devices"] == 8
  one, eight = result["1x1"], result["4x2"]
  for role in ("generator", "critic"):
    for metric in ("loss", "grad_norm"):
      values = one["train"][role][metric]
      assert np.isfinite(values).all() and len(set(values)) == STEPS, (role, metric)
      np.testing.assert_allclose(eight["train"][role][metric], values, rtol=2e-5, err_msg=f"{role} {metric}")
  assert one["train"]["steps"] == eight["train"]["steps"] == STEPS   # a step counts critic updates
  # q [L, out, in] of the tiny DiT ([2, 48, 48]): split 2 ways on its out axis over fsdp 2, whole on one device.
  assert eight["train"]["q_shard"] == {"teacher": [2, 24, 48], "generator": [2, 24, 48], "critic": [2, 24, 48]}
  assert one["train"]["q_shard"]["teacher"] == [2, 48, 48]
  assert eight["train"]["negative_context_shard"] == one["train"]["negative_context_shard"] == [1, 16, 32]

  # D3: every example, one per device, draws noise of its own, the same on one device and on eight.
  noise_one, noise_eight = one["noise"], eight["noise"]
  assert noise_eight["devices"] == 8
  flat = np.asarray(noise_eight["noise"]).reshape(BATCH, -1)
  assert (np.abs(flat[:, None] - flat[None]).max(-1) + np.eye(BATCH) > 0.5).all()
  np.testing.assert_array_equal(noise_eight["noise"], noise_one["noise"])


def test_a_run_on_eight_devices_resumes_with_the_same_losses(tmp_path):
  with open(tmp_path / "prompts.txt", "w") as f:
    f.write("".join(f"tiny prompt number {i}\n" for i in range(BATCH)))
  command = lambda workdir: train_command(
      str(workdir), f"--config.data.prompts={tmp_path}/prompts.txt", f"--config.text.cache_dir={tmp_path}/text",
      *(f"--config.{name}.checkpoint={write_tiny_dit(str(tmp_path / name), seed=seed)}"
        for seed, name in enumerate(("model", "teacher", "critic"))),
      f"--config.data.batch_size={BATCH}", "--config.train.mesh.data=2", "--config.train.mesh.fsdp=4",
      "--config.train.steps=20", "--config.train.checkpoint_every=10", config=SELF_FORCING)
  # No shared compilation cache here: with the programs read from one, 8 simulated devices on a 2-core CPU
  # run several programs' collectives at once and starve each other's threads (XLA's CPU rendezvous aborts).
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  run = lambda workdir: subprocess.run(command(workdir), cwd=REPO, env=env, capture_output=True, text=True,
                                       timeout=600)
  whole = run(tmp_path / "whole")
  assert whole.returncode == 0, whole.stderr[-3000:]
  records = read_jsonl(tmp_path / "whole" / "metrics.jsonl")
  assert [r["step"] for r in records] == list(range(1, 21))

  broken = tmp_path / "broken"
  kill_after_checkpoint(command(broken), broken, env, step=10)
  assert max(r["step"] for r in read_jsonl(broken / "metrics.jsonl")) < 20
  resumed = run(broken)
  assert resumed.returncode == 0 and "resuming from step" in resumed.stdout, resumed.stderr[-3000:]
  assert losses(read_jsonl(broken / "metrics.jsonl")) == losses(records)
