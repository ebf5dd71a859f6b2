"""The DiTs as the callables the DMD losses take: x0 predictors (x_t, t) -> x0 and the teacher's rollout.

Each closes over the parameters it is given; which of them are frozen is the caller's choice (DMD's
wrapper freezes teacher and critic, the critic's own step passes the critic's live parameters).
Guidance is in cfg_x0's form, x0_u + g (x0_c - x0_u). Self-Forcing's DMD real score computes
c + 3.0 (c - u) (`guidance_scale: 3.0`), which is g = 4.0 in this form (training_spec.md 2).
"""
from __future__ import annotations

import jax.numpy as jnp

from hybrid_forcing_jax import flow
from hybrid_forcing_jax.dit import WanDiT
from hybrid_forcing_jax.training.guidance import cfg_x0, text_kv
from hybrid_forcing_jax.training.teacher import euler_trajectory


def teacher_x0_fn(model: WanDiT, params, context, negative_context, guidance: float):
  """The teacher's guided x0 against the negative prompt (DMD's real score). context [B, Lt, text_dim],
  negative_context [1 or B, Lt, text_dim]."""
  cond_kv, uncond_kv = text_kv(model, params, context), text_kv(model, params, negative_context)
  return lambda x_t, t: cfg_x0(model, params, x_t, t, cond_kv, uncond_kv, guidance)


def conditional_x0_fn(model: WanDiT, params, context):
  """The model's conditional x0, float32 (DMD's fake score: the critic without guidance)."""
  kv = text_kv(model, params, context)

  def x0(x_t, t):
    v = model.apply({"params": params}, x_t, t, text_kv=kv)
    return flow.x0_from_velocity(x_t.astype(jnp.float32), v.astype(jnp.float32), t / flow.NUM_TRAIN_TIMESTEPS)

  return x0


def teacher_rollout_fn(model: WanDiT, params, noise, context, negative_context, *, num_steps: int, shift: float,
                       guidance: float):
  """() -> the teacher's final latent [B, F, h, w, C] after `num_steps` guided Euler steps from noise
  (the regulariser's target; 25 steps at shift 5 in the paper). Everything, the prompts' text K/V
  included, runs only when called, so the regulariser's inactive branch does no teacher work."""

  def rollout():
    cond_kv, uncond_kv = text_kv(model, params, context), text_kv(model, params, negative_context)
    return euler_trajectory(model, params, noise, cond_kv, uncond_kv, num_steps=num_steps, shift=shift,
                            guidance=guidance, keep=(num_steps,))[:, 0]

  return rollout
