"""The full-size DMD setting that bench_dmd_step.py and bench_dmd_breakdown.py time, built once here.

Wan-1.3B generator and critic (float32 masters, AdamW, EMA, bf16 compute, full-block remat), a frozen bf16
teacher of `--teacher_preset` (default: `--preset`, the 1.3B as a stand-in for the 14B; `wan_14b` for issue
11's setting), 512 text tokens, 21-frame (7-chunk) rollouts at 60x104 latents (832x480), random weights.
Phase 2 = configs/hybrid.py's stream (sink 3, window 9, linear memory, top-20% block-sparse, relative RoPE)
and the regulariser at weight 0.05, its teacher target read from the batch ("records": make_teacher_rollouts
precomputes it, so its 25-step teacher rollout is not in any time); phase 1 = configs/self_forcing.py's dense
stream, no regulariser.

`--mesh=DATA,FSDP` places everything as the trainer does (training/sharding.py): the train state by the rule
table (split over fsdp), the teacher by dmd_stage.frozen_shardings (split over fsdp, the negative prompt
replicated), the batch split over data x fsdp. The trainer needs a batch divisible by data x fsdp, so the
global batch is data x fsdp: batch 1 per device, issue 11's "batch 1" (the default 1,1 is one device, batch
1). Every array is made where it lives, by a program jitted with its shardings, so a split array is never
whole on one device (the 14B teacher is 29 GB in bf16; a device makes its 14.5 GB half).
`--preset=tiny --latent_hw=8,8 --text_len=16` runs it on the CPU.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import flags
from jax.sharding import Mesh

from configs import hybrid, self_forcing
from hybrid_forcing_jax import cli, dit
from hybrid_forcing_jax.checkpoint import flatten
from hybrid_forcing_jax.streaming.config import StreamConfig
from hybrid_forcing_jax.training import builders, dmd_stage, optim, sharding
from hybrid_forcing_jax.training.dmd_setup import DmdSetup
from hybrid_forcing_jax.training.state import TrainState

FLAGS = flags.FLAGS
flags.DEFINE_enum("phase", "2", ["1", "2"], "1: dense Self-Forcing stream; 2: hybrid stream + regulariser")
flags.DEFINE_string("remat", "full", "Remat policy of the generator (and of the critic unless --critic_remat)")
# The critic's backward is the largest part of a step (bench_dmd_breakdown: 2.15 s of its 3.4-4.3 s update on an
# H200, full remat recomputing the 21-frame forward); the critic's own policy is the first lever to time.
flags.DEFINE_string("critic_remat", None, "Remat policy of the critic (default: --remat)")
flags.DEFINE_list("latent_hw", ["60", "104"], "Latent height, width")
flags.DEFINE_string("preset", "wan_1_3b", "Architecture of generator and critic")
flags.DEFINE_string("teacher_preset", None, "Architecture of the frozen teacher (default: --preset)")
flags.DEFINE_list("mesh", ["1", "1"], "Mesh DATA,FSDP over this process's first DATA x FSDP devices; batch 1 "
                  "per device")
flags.DEFINE_integer("text_len", 512, "Text tokens")

LOSS_FRAMES = 21


@dataclasses.dataclass
class DmdBench:
  """What a DMD step reads: the losses' setup, both optimisers, the compute dtypes (optim.cast_for_compute)
  of generator and critic, the train state (step 0), a batch (context, noise_key, teacher_latents) and the
  frozen inputs (teacher, negative_context), as the trainer passes them to steps.make_dmd_steps' steps;
  the mesh they live on and the shardings of state and frozen inputs (steps.jit_train_step's)."""
  setup: DmdSetup
  optimizer: optax.GradientTransformation
  critic_optimizer: optax.GradientTransformation
  generator_dtype: object
  critic_dtype: object
  state: TrainState
  batch: dict
  frozen: dict
  mesh: Mesh
  state_shardings: TrainState
  frozen_shardings: dict


def _model_cfg(preset: str, remat: str, linear_proj: bool):
  return ml_collections.ConfigDict(dict(preset=preset, overrides=dict(linear_proj=linear_proj), checkpoint="",
                                        dtype="bfloat16", remat_policy=remat, attention_backend="auto"))


def _optimizer(lr: float):
  return optim.make_optimizer(ml_collections.ConfigDict(dict(
      lr=lr, b1=0.0, b2=0.999, weight_decay=0.01, eps=1e-8, clip_norm=10.0, warmup_steps=0, grad_accum=1)))


def stream_config() -> StreamConfig:
  """The stream of --phase."""
  return StreamConfig.from_dict(dict((hybrid if FLAGS.phase == "2" else self_forcing).get_config().stream))


def critic_remat() -> str:
  return FLAGS.critic_remat or FLAGS.remat


def teacher_preset() -> str:
  return FLAGS.teacher_preset or FLAGS.preset


def mesh_shape() -> tuple[int, int]:
  """(data, fsdp) of --mesh."""
  try:
    data, fsdp = (int(x) for x in FLAGS.mesh)
  except ValueError:
    data = fsdp = 0
  if data < 1 or fsdp < 1:
    raise cli.BadInput(f"--mesh: DATA,FSDP (two positive integers) expected, got {','.join(FLAGS.mesh)!r}")
  return data, fsdp


def make_mesh() -> Mesh:
  """The --mesh over this process's first data x fsdp devices (sharding.make_mesh, the trainer's)."""
  data, fsdp = mesh_shape()
  if data * fsdp > jax.device_count():
    raise cli.BadInput(f"--mesh={data},{fsdp} needs {data * fsdp} devices, this machine has {jax.device_count()}")
  return sharding.make_mesh(data, fsdp, jax.devices()[:data * fsdp])


def build() -> DmdBench:
  """The setting of the flags (phase, remat, latent_hw, preset, teacher_preset, mesh, text_len), each array
  made in place on the mesh by a program jitted with the trainer's shardings for it."""
  phase2 = FLAGS.phase == "2"
  stream = stream_config()
  latent_hw = tuple(int(x) for x in FLAGS.latent_hw)
  mesh = make_mesh()
  model = builders.build_module(_model_cfg(FLAGS.preset, FLAGS.remat, phase2))
  critic = builders.build_module(_model_cfg(FLAGS.preset, critic_remat(), False))
  teacher = builders.build_module(_model_cfg(teacher_preset(), "none", False))
  c, t = model.config, teacher.config
  if (t.text_dim, t.in_dim) != (c.text_dim, c.in_dim):   # the check of dmd_stage.build
    raise cli.BadInput(f"--teacher_preset={teacher_preset()}: text_dim {t.text_dim} / in_dim {t.in_dim} differ "
                       f"from --preset={FLAGS.preset}'s {c.text_dim} / {c.in_dim}")
  window = LOSS_FRAMES // stream.chunk_frames
  setup = DmdSetup(generator=model, teacher=teacher, critic=critic, stream=stream, latent_hw=latent_hw,
                   min_chunks=window, max_chunks=window, loss_frames=LOSS_FRAMES,
                   regulariser_weight=0.05 if phase2 else 0.0, regulariser_source="records")
  optimizer, critic_optimizer = _optimizer(1.5e-6), _optimizer(2e-7)

  def init_state():
    # builders.build_dit's random init with the seeds it had here: 0 generator, 1 critic (2 teacher).
    params = dit.init_params(c, jax.random.key(0), param_dtype=jnp.float32)
    critic_params = dit.init_params(critic.config, jax.random.key(1), param_dtype=jnp.float32)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      ema=optim.init_ema(params), rng=jax.random.key_data(jax.random.key(0)),
                      critic=critic_params, critic_opt_state=critic_optimizer.init(critic_params))

  k = jax.random.split(jax.random.key(3), 3)
  n = mesh.size

  def init_batch():
    return dict(context=jax.random.normal(k[0], (n, FLAGS.text_len, c.text_dim), jnp.bfloat16),
                noise_key=jax.random.key_data(jax.random.split(k[1], n)),
                teacher_latents=jax.random.normal(k[2], (n, LOSS_FRAMES) + latent_hw + (c.in_dim,), jnp.float32))

  state_shardings = sharding.train_state_shardings(mesh, optimizer, jax.eval_shape(init_state), critic_optimizer)
  init_frozen, frozen_shardings = frozen_program(teacher, FLAGS.text_len, mesh)
  return DmdBench(setup=setup, optimizer=optimizer, critic_optimizer=critic_optimizer,
                  generator_dtype=dit.param_shapes(c, model.param_dtype),
                  critic_dtype=dit.param_shapes(critic.config, critic.param_dtype),
                  state=jax.jit(init_state, out_shardings=state_shardings)(),
                  batch=jax.jit(init_batch, out_shardings=sharding.batch_sharding(mesh))(),
                  frozen=jax.jit(init_frozen, out_shardings=frozen_shardings)(), mesh=mesh,
                  state_shardings=state_shardings, frozen_shardings=frozen_shardings)


def frozen_program(teacher: dit.WanDiT, text_len: int, mesh: Mesh):
  """-> (init, shardings): init() makes the frozen inputs, the teacher's random weights (seed 2) and a
  negative prompt; jitted with out_shardings=shardings (dmd_stage.frozen_shardings, the trainer's) each
  device computes only its share, so a 14B teacher is never whole on one device."""
  config = teacher.config

  def init():
    return {"teacher": dit.init_params(config, jax.random.key(2), param_dtype=teacher.param_dtype),
            "negative_context": jax.random.normal(jax.random.key(4), (1, text_len, config.text_dim), jnp.bfloat16)}

  return init, dmd_stage.frozen_shardings(mesh, frozen=jax.eval_shape(init))


def gib_per_device(tree, devices) -> list[float]:
  """GiB of the tree's arrays held on each of `devices` (its shards there)."""
  held = {d: 0 for d in devices}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      held[shard.device] += shard.data.nbytes
  return [held[d] / 2**30 for d in devices]


def largest_split(params) -> tuple[str, tuple, tuple]:
  """(name, shape, shape of its shard on the first device) of the largest parameter."""
  name, leaf = max(flatten(params).items(), key=lambda item: item[1].size)
  return name, leaf.shape, leaf.addressable_shards[0].data.shape


def peak_gib_per_device(devices) -> list[float]:
  """Peak memory so far of each of `devices` (0 where the backend keeps no statistics, as the CPU)."""
  return [(d.memory_stats() or {}).get("peak_bytes_in_use", 0) / 2**30 for d in devices]


def peak_gib() -> float:
  """Peak device memory so far, the most of any of this process's devices."""
  return max(peak_gib_per_device(jax.local_devices()))


def setting(setup: DmdSetup) -> str:
  """One line naming what was timed."""
  data, fsdp = mesh_shape()
  return (f"phase {FLAGS.phase} on {data * fsdp} x {jax.devices()[0].device_kind} (mesh data {data} x fsdp {fsdp}, "
          f"batch {data * fsdp} = 1 per device), generator and critic {FLAGS.preset}, teacher {teacher_preset()}, "
          f"{setup.loss_frames} frames at {setup.latent_hw}, remat {FLAGS.remat}"
          + (f" (critic {critic_remat()})" if critic_remat() != FLAGS.remat else ""))
