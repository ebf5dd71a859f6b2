"""The full-size DMD setting that bench_dmd_step.py and bench_dmd_breakdown.py time, built once here.

Wan-1.3B generator and critic (float32 masters, AdamW, EMA, bf16 compute, full-block remat), the 1.3B
teacher as a frozen bf16 stand-in for the 14B, batch 1, 512 text tokens, 21-frame (7-chunk) rollouts at
60x104 latents (832x480), random weights. Phase 2 = configs/hybrid.py's stream (sink 3, window 9, linear
memory, top-20% block-sparse, relative RoPE) and the regulariser at weight 0.05, its teacher target read
from the batch ("records": make_teacher_rollouts precomputes it, so its 25-step teacher rollout is not in
any time); phase 1 = configs/self_forcing.py's dense stream, no regulariser.
`--preset=tiny --latent_hw=8,8 --text_len=16` runs it on the CPU.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import flags

from configs import hybrid, self_forcing
from hybrid_forcing_jax import dit
from hybrid_forcing_jax.streaming.config import StreamConfig
from hybrid_forcing_jax.training import builders, optim
from hybrid_forcing_jax.training.dmd_setup import DmdSetup
from hybrid_forcing_jax.training.state import TrainState

FLAGS = flags.FLAGS
flags.DEFINE_enum("phase", "2", ["1", "2"], "1: dense Self-Forcing stream; 2: hybrid stream + regulariser")
flags.DEFINE_string("remat", "full", "Remat policy of generator and critic")
flags.DEFINE_list("latent_hw", ["60", "104"], "Latent height, width")
flags.DEFINE_string("preset", "wan_1_3b", "Architecture of generator, critic and teacher")
flags.DEFINE_integer("text_len", 512, "Text tokens")

LOSS_FRAMES = 21


@dataclasses.dataclass
class DmdBench:
  """What a DMD step reads: the losses' setup, both optimisers, the compute dtypes (optim.cast_for_compute)
  of generator and critic, the train state (step 0), a batch (context, noise_key, teacher_latents) and the
  frozen inputs (teacher, negative_context), as the trainer passes them to steps.make_dmd_steps' steps."""
  setup: DmdSetup
  optimizer: optax.GradientTransformation
  critic_optimizer: optax.GradientTransformation
  generator_dtype: object
  critic_dtype: object
  state: TrainState
  batch: dict
  frozen: dict


def _model_cfg(remat: str, linear_proj: bool):
  return ml_collections.ConfigDict(dict(preset=FLAGS.preset, overrides=dict(linear_proj=linear_proj), checkpoint="",
                                        dtype="bfloat16", remat_policy=remat, attention_backend="auto"))


def _optimizer(lr: float):
  return optim.make_optimizer(ml_collections.ConfigDict(dict(
      lr=lr, b1=0.0, b2=0.999, weight_decay=0.01, eps=1e-8, clip_norm=10.0, warmup_steps=0, grad_accum=1)))


def stream_config() -> StreamConfig:
  """The stream of --phase."""
  return StreamConfig.from_dict(dict((hybrid if FLAGS.phase == "2" else self_forcing).get_config().stream))


def build() -> DmdBench:
  """The setting of the flags (phase, remat, latent_hw, preset, text_len), on the default device."""
  phase2 = FLAGS.phase == "2"
  stream = stream_config()
  latent_hw = tuple(int(x) for x in FLAGS.latent_hw)
  model, params = builders.build_dit(_model_cfg(FLAGS.remat, phase2), seed=0, param_dtype=jnp.float32)
  critic, critic_params = builders.build_dit(_model_cfg(FLAGS.remat, False), seed=1, param_dtype=jnp.float32)
  teacher, teacher_params = builders.build_dit(_model_cfg("none", False), seed=2)
  window = LOSS_FRAMES // stream.chunk_frames
  setup = DmdSetup(generator=model, teacher=teacher, critic=critic, stream=stream, latent_hw=latent_hw,
                   min_chunks=window, max_chunks=window, loss_frames=LOSS_FRAMES,
                   regulariser_weight=0.05 if phase2 else 0.0, regulariser_source="records")
  optimizer, critic_optimizer = _optimizer(1.5e-6), _optimizer(2e-7)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                     ema=jax.tree.map(jnp.copy, params), rng=jax.random.key_data(jax.random.key(0)),
                     critic=critic_params, critic_opt_state=critic_optimizer.init(critic_params))
  k = jax.random.split(jax.random.key(3), 4)
  c = model.config
  batch = dict(context=jax.random.normal(k[0], (1, FLAGS.text_len, c.text_dim), jnp.bfloat16),
               noise_key=jax.random.key_data(jax.random.split(k[1], 1)),
               teacher_latents=jax.random.normal(k[2], (1, LOSS_FRAMES) + latent_hw + (c.in_dim,), jnp.float32))
  frozen = {"teacher": teacher_params,
            "negative_context": jax.random.normal(k[3], (1, FLAGS.text_len, c.text_dim), jnp.bfloat16)}
  return DmdBench(setup=setup, optimizer=optimizer, critic_optimizer=critic_optimizer,
                  generator_dtype=dit.param_shapes(model.config, model.param_dtype),
                  critic_dtype=dit.param_shapes(critic.config, critic.param_dtype), state=state, batch=batch,
                  frozen=frozen)


def peak_gib() -> float:
  """Peak device memory so far (0 where the backend keeps no statistics, as the CPU)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use", 0) / 2**30


def setting(setup: DmdSetup) -> str:
  """One line naming what was timed."""
  return (f"phase {FLAGS.phase} on {jax.devices()[0].device_kind}, {FLAGS.preset}, {setup.loss_frames} frames at "
          f"{setup.latent_hw}, remat {FLAGS.remat}")
