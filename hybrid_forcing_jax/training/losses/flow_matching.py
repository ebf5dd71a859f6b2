"""Flow matching: how the bidirectional teacher is trained (rectified flow, Lipman et al. 2023 /
Liu et al. 2023; Wan2.1's training objective; the `flow_matching` stage).

For a clean latent video x0, noise eps ~ N(0, I) and one sigma per video,

    x_t = (1 - sigma) x0 + sigma eps,
    L = mean over b, frames, pixels of || v_theta(x_t, t, c) - (eps - x0) ||^2,

with t = 1000 sigma, every frame of a video at the same t (the teacher is sampled that way), and v_theta
the WanDiT on its bidirectional layout. The timestep law is u ~ U[0, 1), sigma = shift(u)
(flow.sample_training_timestep without its DMD clamp): the N Euler steps of the teacher's sampler at the
same shift are uniform in u, so the model is trained where the sampler asks it most, from pure noise
(sigma -> 1, where sampling starts) down to sigma -> 0.

Classifier-free guidance needs the unconditional model too: each example's caption embedding c is
replaced by the negative prompt's with probability `caption_dropout` (drawn per example), so one network
learns both v(x_t, t, c) and v(x_t, t, negative), as Wan's teacher is used with CFG.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from hybrid_forcing_jax import flow
from hybrid_forcing_jax.training.losses.reduction import loss_dtype, mean_square


def noised_inputs(latents, rng, *, shift: float):
  """latents [B, F, h, w, C] -> (x_t float32, t float32 [B, F], eps float32): one t per example."""
  key_t, key_eps = jax.random.split(rng)
  b, f = latents.shape[:2]
  t = flow.sample_training_timestep(jax.random.uniform(key_t, (b,), jnp.float32), shift, 0.0,
                                    float(flow.NUM_TRAIN_TIMESTEPS))
  eps = jax.random.normal(key_eps, latents.shape, jnp.float32)
  x_t = flow.add_noise(latents.astype(jnp.float32), eps, t / flow.NUM_TRAIN_TIMESTEPS)
  return x_t, jnp.broadcast_to(t[:, None], (b, f)), eps


def drop_captions(context, negative_context, rng, *, caption_dropout: float):
  """context [B, Lt, D] with each example's rows replaced by negative_context [1, Lt, D] with probability
  caption_dropout -> (context, dropped bool [B])."""
  dropped = jax.random.uniform(rng, (context.shape[0],)) < caption_dropout
  return jnp.where(dropped[:, None, None], negative_context.astype(context.dtype), context), dropped


def flow_matching_loss(params, frozen, batch, rng, *, model, shift: float, caption_dropout: float):
  """-> (loss scalar, metrics {"t": mean t, "caption_dropped": share of dropped captions}).

  params: the WanDiT's in its compute dtypes; frozen: {"negative_context": [1, Lt, text_dim]} (the
  embedding of text.negative_prompt); batch: "latents" [B, F, h, w, C] (clean), "context" [B, Lt, text_dim].
  """
  key_noise, key_drop = jax.random.split(rng)
  latents = batch["latents"]
  x_t, t, eps = noised_inputs(latents, key_noise, shift=shift)
  context, dropped = drop_captions(batch["context"], frozen["negative_context"], key_drop,
                                   caption_dropout=caption_dropout)
  dtype = loss_dtype()
  v = model.apply({"params": params}, x_t, t, context).astype(dtype)
  target = flow.velocity_target(latents.astype(dtype), eps.astype(dtype))
  return mean_square(v - target), {"t": jnp.mean(t), "caption_dropped": jnp.mean(dropped.astype(jnp.float32))}
