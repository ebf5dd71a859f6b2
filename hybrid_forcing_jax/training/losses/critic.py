"""The critic's (DMD's fake score's) loss: flow matching on the generator's detached video (DMD2 Sec. 4;
Self-Forcing `model/dmd.py::critic_loss` with `utils/loss.py::FlowPredLoss`; training_spec.md 2).

With its own t (the law of DMD's t) and noise eps, x_t = (1 - sigma) x + sigma eps; the critic
predicts x0, its velocity is recomputed from that x0, flow_pred = (x_t - x0) / sigma, and
  loss = mean((flow_pred - (eps - x))^2)        over every frame, unmasked.
Only the critic's parameters get a gradient: the video is under stop_gradient.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from hybrid_forcing_jax import flow
from hybrid_forcing_jax.training.losses.noising import noise_video
from hybrid_forcing_jax.training.losses.reduction import loss_dtype, mean_square


def critic_loss(video, critic_x0_fn, rng, *, shift: float, t_min: float = 20.0, t_max: float = 980.0):
  """-> (loss, metrics) for the generated latents video [B, F, h, w, C] (detached here).

  critic_x0_fn: (x_t float32 [B, F, h, w, C], t float32 [B, F]) -> x0, built on the critic's live
  parameters (training/losses/scores.py). Metrics: critic_t (batch mean).
  """
  x_t, t, eps = noise_video(video, rng, shift=shift, t_min=t_min, t_max=t_max)
  dtype = loss_dtype()
  x0 = critic_x0_fn(x_t, t).astype(dtype)
  flow_pred = flow.velocity_from_x0(x_t.astype(dtype), x0, t[:, 0].astype(dtype) / flow.NUM_TRAIN_TIMESTEPS)
  target = flow.velocity_target(jax.lax.stop_gradient(video).astype(dtype), eps.astype(dtype))
  return mean_square(flow_pred - target), {"critic_t": jnp.mean(t)}
