"""ODE-init regression: the causal student learns to jump from a point of the teacher's ODE trajectory
straight to its end (CausVid `causvid/ode_regression.py`; Self-Forcing `model/ode_regression.py`;
training_spec.md 1, "Regression").

For a teacher trajectory x^0 (noise), ..., x^{K-2}, x^{K-1} (clean) kept at the student's timesteps
t_0 > ... > t_{K-2} (the warped 4-step schedule [1000, 937.5, 833.3, 625] for the pairs kept at
indices 0/12/24/36 of 48 Euler steps at shift 5; training_spec.md 1, "Timestep alignment"), every chunk c
of `chunk_frames` latent frames draws one index i_c ~ U{0..K-2}, shared by its frames, and

    L = mean over b, frames, pixels of || x0_theta(x^{i_c}, t_{i_c}) - x^{K-1} ||^2,
    x0_theta(x_t, t) = x_t - sigma(t) v_theta(x_t, t),   sigma = t / 1000,

with v_theta the student WanDiT on the block-causal layout (bidirectional inside a chunk, causal across
chunks, the whole video in one pass). The inputs never include the clean latent (t > 0 everywhere, as
Self-Forcing's 4 timesteps against 5 stored latents), so no frame is masked out of the mean.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from hybrid_forcing_jax import flow
from hybrid_forcing_jax.dit import AttentionLayout
from hybrid_forcing_jax.training.losses.reduction import mean_square


def chunk_inputs(latents, rng, *, chunk_frames: int, denoising_timesteps: Sequence[float]):
  """latents [B, K, F, h, w, C] -> (x_t [B, F, h, w, C] float32, t [B, F] float32, index [B, F] int32).

  One index per (example, chunk), drawn over the whole batch from `rng`, so each example has its own.
  """
  b, k, f = _check_latents(latents, chunk_frames, denoising_timesteps)
  index = jax.random.randint(rng, (b, f // chunk_frames), 0, k - 1)
  index = jnp.repeat(index, chunk_frames, axis=1)
  x_t = latents[jnp.arange(b)[:, None], index, jnp.arange(f)[None, :]].astype(jnp.float32)
  t = jnp.asarray(denoising_timesteps, jnp.float32)[index]
  return x_t, t, index


def _check_latents(latents, chunk_frames, denoising_timesteps):
  if latents.ndim != 6:
    raise ValueError(f"batch['latents'] must be a trajectory [B, K, F, h, w, C], got shape {latents.shape}")
  b, k, f = latents.shape[:3]
  if k != len(denoising_timesteps) + 1:
    raise ValueError(f"batch['latents'] holds K={k} trajectory points; the ODE loss needs one per denoising "
                     f"timestep {list(denoising_timesteps)} plus the clean latent ({len(denoising_timesteps) + 1})")
  if f % chunk_frames:
    raise ValueError(f"batch['latents'] has {f} frames, not a multiple of chunk_frames {chunk_frames}")
  return b, k, f


def ode_regression_loss(params, batch, rng, *, model, chunk_frames: int, denoising_timesteps: Sequence[float]):
  """-> (loss float32 scalar, metrics). batch: "latents" [B, K, F, h, w, C] float32 (entry K-1 clean) and
  either "context" [B, Lt, text_dim] (the text path is trained) or "text_kv" (precomputed with these
  params: the text embedding and cross-attention k/v then get no gradient).

  model: the student WanDiT (its dtype and remat policy as configured); params in its compute dtypes.
  """
  latents = batch["latents"]
  x_t, t, _ = chunk_inputs(latents, rng, chunk_frames=chunk_frames, denoising_timesteps=denoising_timesteps)
  v = model.apply({"params": params}, x_t, t, batch.get("context"), text_kv=batch.get("text_kv"),
                  layout=AttentionLayout.block_causal(chunk_frames))
  x0 = flow.x0_from_velocity(x_t, v.astype(jnp.float32), t / flow.NUM_TRAIN_TIMESTEPS)
  loss = mean_square(x0 - latents[:, -1].astype(jnp.float32))
  return loss, {}
