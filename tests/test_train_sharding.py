"""Sharding: the rule table covers the 1.3B tree (big tensors sharded, optimiser state alike), and the
ODE train step gives the same losses on 1 device as on 8 simulated ones (data 2 x fsdp 4, data 8), with
each device's attention over its own examples only; rematerialisation leaves the step unchanged."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import AbstractMesh

from hybrid_forcing_jax import dit
from hybrid_forcing_jax.checkpoint import flatten
from hybrid_forcing_jax.config import WAN_1_3B
from hybrid_forcing_jax.training import optim, sharding, steps
from tests.test_train_ode_loss import ode_problem, trajectories

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH, STEPS = 8, 3
MESHES = ((2, 4), (8, 1))

EIGHT_DEVICES = """
import json
import jax
from hybrid_forcing_jax.attention import dispatch
from hybrid_forcing_jax.training import sharding
from tests.test_train_sharding import MESHES, train

xla, seen = dispatch._BACKENDS["xla"], []
def recorded(q, k, v, **kw):   # the batch of each attention a train step (traced under its mesh) runs
  if not jax.sharding.get_abstract_mesh().empty:
    seen.append(q.shape[0])
  return xla(q, k, v, **kw)
dispatch._BACKENDS["xla"] = recorded
runs = {}
for data, fsdp in MESHES:
  mesh = sharding.make_mesh(data, fsdp)
  seen.clear()
  runs[f"{data}x{fsdp}"] = {**train(mesh), "attention_batches": sorted(set(seen))}
seen.clear()
train(sharding.make_mesh(1, 1, devices=jax.devices()[:1]))
print(json.dumps({"devices": jax.device_count(), "runs": runs, "one_device_attention_batches": sorted(set(seen))}))
"""


def train(mesh, remat: str = "none"):
  """STEPS float32 ODE train steps on `mesh`, jitted with sharding.py's shardings (the state donated);
  -> losses, grad norms and the shard shape of a q weight."""
  loss_fn, tx, state, storage = ode_problem(BATCH, dtype=jnp.float32, remat=remat)
  state_shardings = sharding.train_state_shardings(mesh, tx, state)
  batch_sharding = sharding.batch_sharding(mesh)
  step = steps.jit_train_step(
      steps.make_train_step(loss_fn, tx, ema_decay=0.99, ema_start=0, compute_dtype=storage),
      state_shardings, batch_sharding)
  state = jax.device_put(state, state_shardings)
  batch = jax.device_put(jax.tree.map(jnp.asarray, trajectories(BATCH)), batch_sharding)
  out = {"loss": [], "grad_norm": []}
  base_key = jax.random.key(1)   # not state.rng itself: the state's buffers are donated
  for _ in range(STEPS):
    state, metrics = step(state, batch, base_key)
    out["loss"].append(float(metrics["loss"]))
    out["grad_norm"].append(float(metrics["grad_norm"]))
  q = state.params["blocks"]["self_attn"]["q"]["weight"]
  out["q_shard"] = list(q.addressable_shards[0].data.shape)
  return out


@pytest.fixture(scope="module")
def one_device():
  return train(sharding.make_mesh(1, 1, devices=jax.devices()[:1]))


def test_eight_devices_give_the_one_device_losses(one_device):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  done = subprocess.run([sys.executable, "-c", EIGHT_DEVICES], capture_output=True, text=True, cwd=ROOT, env=env,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert result["devices"] == 8
  for name, run in result["runs"].items():
    np.testing.assert_allclose(run["loss"], one_device["loss"], rtol=2e-5, err_msg=name)
    np.testing.assert_allclose(run["grad_norm"], one_device["grad_norm"], rtol=2e-5, err_msg=name)
  assert one_device["loss"][-1] < one_device["loss"][0]
  # The q weight [L, out, in] is split 4 ways on its out axis over fsdp 4 and whole with fsdp 1.
  assert result["runs"]["2x4"]["q_shard"] == [2, 12, 48] and result["runs"]["8x1"]["q_shard"] == [2, 48, 48]
  # Each device's attention saw an eighth of every batch the one device's did (the prefix attention's
  # batches are examples x chunk groups): its own examples, as cuDNN's partitioner needs.
  whole = result["one_device_attention_batches"]
  assert whole and min(whole) == BATCH and all(b % 8 == 0 for b in whole), whole
  for name, run in result["runs"].items():
    assert run["attention_batches"] == [b // 8 for b in whole], (name, run["attention_batches"], whole)


def test_remat_leaves_the_step_unchanged(one_device):
  remat = train(sharding.make_mesh(1, 1, devices=jax.devices()[:1]), remat="full")
  np.testing.assert_allclose(remat["loss"], one_device["loss"], rtol=1e-6)
  np.testing.assert_allclose(remat["grad_norm"], one_device["grad_norm"], rtol=1e-6)


def test_rules_shard_the_big_tensors_of_wan_1_3b():
  mesh = AbstractMesh((2, 8), sharding.AXES)
  params = dit.param_shapes(WAN_1_3B, jnp.float32)
  shapes = flatten(params)
  specs = {name: s.spec for name, s in flatten(sharding.param_shardings(mesh, params)).items()}
  assert specs.keys() == shapes.keys()
  sizes = {name: int(np.prod(s.shape)) for name, s in shapes.items()}
  big = {name for name, n in sizes.items() if n >= 2 ** 20}
  assert big and all("fsdp" in specs[name] for name in big), {n: specs[n] for n in big}
  assert all(specs[name] == jax.sharding.PartitionSpec() for name in shapes if name.endswith(("bias", "norm_q.weight")))
  replicated = sum(n for name, n in sizes.items() if "fsdp" not in specs[name])
  assert replicated / sum(sizes.values()) < 0.01


def test_optimiser_state_follows_the_params():
  mesh = AbstractMesh((2, 8), sharding.AXES)
  params = dit.param_shapes(WAN_1_3B, jnp.float32)
  tx = optim.make_optimizer(ml_collections.ConfigDict(dict(
      lr=2e-6, b1=0.0, b2=0.999, eps=1e-8, weight_decay=0.01, clip_norm=10.0, warmup_steps=0, grad_accum=2)))
  opt_state = jax.eval_shape(tx.init, params)
  shardings = sharding.opt_state_shardings(mesh, tx, opt_state, params)
  param_specs = jax.tree.map(lambda s: s.spec, sharding.param_shardings(mesh, params))
  adam = shardings.inner_opt_state[1].inner_state[0]
  for moments in (adam.mu, adam.nu, shardings.acc_grads):
    assert jax.tree.map(lambda s: s.spec, moments) == param_specs
  assert shardings.mini_step.spec == shardings.gradient_step.spec == jax.sharding.PartitionSpec()


def test_bad_meshes_are_named():
  with pytest.raises(ValueError, match="data x fsdp must equal the 1 devices"):
    sharding.make_mesh(2, -1, devices=jax.devices()[:1])
  with pytest.raises(ValueError, match=r"'blocks.ffn.0.weight' of shape \(30, 8960, 1536\): axis 1 \(8960\) does "
                                       "not divide over mesh axes fsdp of size 3"):
    sharding.param_shardings(AbstractMesh((1, 3), sharding.AXES), dit.param_shapes(WAN_1_3B))


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"SLURM_NTASKS": "8"}, None),   # an allocation's batch script: one process
    ({"SLURM_NTASKS": "8", "SLURM_PROCID": "3"}, ((), {})),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, ((), {})),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"},
     (("10.0.0.1:1234",), {"num_processes": 4, "process_id": 2})),
])
def test_distributed_starts_only_for_several_processes(monkeypatch, env, expected):
  for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS", "SLURM_PROCID",
              "OMPI_COMM_WORLD_SIZE"):
    monkeypatch.delenv(key, raising=False)
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *args, **kwargs: calls.append((args, kwargs)))
  assert sharding.initialize_distributed() == (expected is not None)
  assert calls == ([] if expected is None else [expected])
