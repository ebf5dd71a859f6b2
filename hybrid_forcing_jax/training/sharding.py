"""Where every array of a training run lives: a (data, fsdp) mesh over all devices of all hosts, and one
table of rules from canonical parameter names to PartitionSpecs.

Parameters (and their EMA and optimiser moments) are sharded over "fsdp" along their largest axis and
replicated over "data"; batches are split over both axes, so every device holds distinct examples. The
rule table (`PARAM_RULES`) is the only place where parameter sharding is decided: jit's in/out shardings are
derived from it (architecture.md 2, big_vision's regex rules). The model names no mesh axis; it only keeps
its activations split by example wherever a step is traced under a mesh (`traced_in_mesh`, mesh_batch.py).
"""
from __future__ import annotations

import functools
import os
import re

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hybrid_forcing_jax.checkpoint import flatten, unflatten

AXES = ("data", "fsdp")
BATCH_SPEC = P(AXES)

# (regex over the dotted names of checkpoint.flatten, spec); the first full match wins. Stacked block
# weights are [L, out, in], top-level ones [out, in]; each shards its largest axis, which every Wan size
# divides by the usual fsdp sizes (1536, 5120, 8960, 13824, 9216 = 6 dim).
PARAM_RULES = (
    (r"blocks\.(self_attn|cross_attn)\.[qkvo]\.weight", P(None, "fsdp", None)),
    (r"blocks\.ffn\.0\.weight", P(None, "fsdp", None)),      # [L, ffn_dim, dim]
    (r"blocks\.ffn\.2\.weight", P(None, None, "fsdp")),      # [L, dim, ffn_dim]
    (r"text_embedding\.0\.weight", P(None, "fsdp")),         # [dim, text_dim]
    (r"(text_embedding\.2|time_embedding\.[02]|time_projection\.1)\.weight", P("fsdp", None)),
    # Biases, norms, modulation, the patch embedding, the head and linear_proj: < 0.5M elements each.
    (r".*", P()),
)


def initialize_distributed() -> bool:
  """Join the other processes of a multi-host run (before any other JAX call); True when it did.

  Only when the environment describes several processes: JAX_COORDINATOR_ADDRESS (with JAX_NUM_PROCESSES
  and JAX_PROCESS_ID, or a cluster JAX detects), an srun step of several SLURM tasks (SLURM_PROCID is set
  inside srun only: a batch script of an allocation with several tasks is still one process), or an
  Open MPI job. A single-process run does nothing, so the same command works on one GPU and on many hosts.
  """
  if jax.distributed.is_initialized():
    return True
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    kwargs = {}
    if "JAX_NUM_PROCESSES" in env:
      kwargs = dict(num_processes=int(env["JAX_NUM_PROCESSES"]), process_id=int(env.get("JAX_PROCESS_ID", "0")))
    jax.distributed.initialize(env["JAX_COORDINATOR_ADDRESS"], **kwargs)
    return True
  srun_tasks = int(env.get("SLURM_NTASKS", "1")) if "SLURM_PROCID" in env else 1
  if srun_tasks > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    jax.distributed.initialize()   # JAX reads the SLURM / Open MPI variables itself
    return True
  return False


def make_mesh(data: int, fsdp: int, devices=None) -> Mesh:
  """A ("data", "fsdp") mesh over every device of every process (or `devices`); -1 = what is left."""
  devices = jax.devices() if devices is None else list(devices)
  n = len(devices)
  if data == -1 and fsdp == -1:
    raise ValueError("train.mesh: at most one of data and fsdp may be -1")
  if data == -1:
    data = n // fsdp if fsdp >= 1 and n % fsdp == 0 else 0
  elif fsdp == -1:
    fsdp = n // data if data >= 1 and n % data == 0 else 0
  if data < 1 or fsdp < 1 or data * fsdp != n:
    raise ValueError(f"train.mesh: data x fsdp must equal the {n} devices, got data={data}, fsdp={fsdp}")
  # fsdp innermost: its all-gathers run between neighbouring devices (same host, NVLink).
  return Mesh(np.asarray(devices).reshape(data, fsdp), AXES)


def param_spec(name: str, shape, mesh: Mesh) -> P:
  """The PartitionSpec of one parameter from PARAM_RULES; an axis the mesh does not divide is an error."""
  spec = next(spec for pattern, spec in PARAM_RULES if re.fullmatch(pattern, name))
  if len(spec) > len(shape):
    raise ValueError(f"sharding rule {spec} for {name!r} needs {len(spec)} axes, the parameter has shape {shape}")
  for axis, names in enumerate(spec):
    size = int(np.prod([mesh.shape[a] for a in _axis_names(names)]))
    if shape[axis] % size:
      raise ValueError(f"parameter {name!r} of shape {tuple(shape)}: axis {axis} ({shape[axis]}) does not divide "
                       f"over mesh axes {names} of size {size}; choose another train.mesh.fsdp")
  return spec


def _axis_names(names) -> tuple:
  if names is None:
    return ()
  return names if isinstance(names, tuple) else (names,)


def param_shardings(mesh: Mesh, params):
  """A tree of NamedShardings matching `params` (arrays or ShapeDtypeStructs, canonical names)."""
  flat = flatten(params)
  return unflatten({name: NamedSharding(mesh, param_spec(name, leaf.shape, mesh)) for name, leaf in flat.items()})


def opt_state_shardings(mesh: Mesh, optimizer: optax.GradientTransformation, opt_state, params):
  """Shardings of an optimiser state: every params-shaped part (moments, accumulated gradients) as its
  parameter, everything else (counts, hyperparameters) replicated."""
  shardings = param_shardings(mesh, params)
  replicated = NamedSharding(mesh, P())
  return optax.tree_map_params(optimizer, lambda _, sharding: sharding, opt_state, shardings,
                               transform_non_params=lambda _: replicated)


def traced_in_mesh(fn, mesh: Mesh):
  """`fn` traced under `mesh` (as jax's abstract mesh), for jit: the model then keeps its activations split by
  example and runs each device's attention on its own examples (mesh_batch.py, attention/dispatch.py),
  instead of as XLA's propagation happens to shard them."""
  @functools.wraps(fn)
  def traced(*args):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args)
  return traced


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Examples split over data x fsdp (the leading axis of every batch array); the rest replicated."""
  return NamedSharding(mesh, BATCH_SPEC)


def train_state_shardings(mesh: Mesh, optimizer: optax.GradientTransformation, state, critic_optimizer=None):
  """Shardings of a TrainState (arrays or ShapeDtypeStructs): params and EMA by the rule table, the
  optimiser state from them, step and key replicated; the critic (DMD) like the generator, its state
  from `critic_optimizer`."""
  replicated = NamedSharding(mesh, P())
  critic = state.critic
  return state.replace(
      step=replicated, rng=replicated,
      params=param_shardings(mesh, state.params),
      opt_state=opt_state_shardings(mesh, optimizer, state.opt_state, state.params),
      ema=None if state.ema is None else param_shardings(mesh, state.ema),
      critic=None if critic is None else param_shardings(mesh, critic),
      critic_opt_state=(None if state.critic_opt_state is None
                        else opt_state_shardings(mesh, critic_optimizer, state.critic_opt_state, critic)))
