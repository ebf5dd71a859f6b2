"""The DMD generator loss: Eq. 2 of the paper, which is DMD's distribution-matching gradient (Yin et al.
2023, Eqs. 7-8) as Self-Forcing computes it (`model/dmd.py::compute_distribution_matching_loss`;
training_spec.md 2).

For a generated video x (with gradient), one t per sample and x_t = (1 - sigma) sg(x) + sigma eps:
  real = the frozen teacher's x0 under CFG against the negative prompt,
  fake = the critic's conditional x0,
  grad = nan_to_num((fake - real) / mean_{F,h,w,C} |x - real|)      (per sample, over all frames),
  loss = 0.5 * mean_masked((x - sg(x - grad))^2),
so d loss / d x = mask * grad / #kept elements: the generator moves along real - fake, that is from the
critic's (the generator's own) distribution toward the teacher's. Nothing here differentiates the
teacher, the critic or x_t. mean_masked averages over the kept frames only, as Self-Forcing's
`F.mse_loss(x[mask], target[mask])`; the sums run in float32, float64 under x64 (reduction.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from hybrid_forcing_jax.dit import WanDiT
from hybrid_forcing_jax.training.losses.noising import noise_video
from hybrid_forcing_jax.training.losses.reduction import loss_dtype, mean_square
from hybrid_forcing_jax.training.losses.scores import conditional_x0_fn, teacher_x0_fn


def dmd_loss(x, real_x0_fn, fake_x0_fn, rng, *, shift: float, t_min: float = 20.0, t_max: float = 980.0,
             frame_mask=None):
  """-> (loss, metrics), the DMD loss of the generated latents x [B, F, h, w, C].

  real_x0_fn, fake_x0_fn: (x_t float32 [B, F, h, w, C], t float32 [B, F]) -> x0, the teacher's CFG x0
  and the critic's conditional x0 (training/losses/scores.py builds them from DiTs); their outputs are
  under stop_gradient here. rng: draws t and eps. shift, t_min, t_max: the timestep law (5.0, 20, 980).
  frame_mask: None or [F] / [B, F]; 0 drops a frame from the mean (the first chunk of a long rollout),
  not from the normaliser. Metrics (scalars, batch means): dmd_normaliser, dmd_grad_abs_mean, dmd_t.
  """
  x_t, t, _ = noise_video(x, rng, shift=shift, t_min=t_min, t_max=t_max)
  dtype = loss_dtype()
  real = jax.lax.stop_gradient(real_x0_fn(x_t, t)).astype(dtype)
  fake = jax.lax.stop_gradient(fake_x0_fn(x_t, t)).astype(dtype)
  x = x.astype(dtype)
  normaliser = jnp.mean(jnp.abs(jax.lax.stop_gradient(x) - real), axis=tuple(range(1, x.ndim)), keepdims=True)
  grad = jnp.nan_to_num((fake - real) / normaliser)
  loss = 0.5 * mean_square(x - jax.lax.stop_gradient(x - grad), frame_mask)
  metrics = {"dmd_normaliser": jnp.mean(normaliser), "dmd_grad_abs_mean": jnp.mean(jnp.abs(grad)),
             "dmd_t": jnp.mean(t)}
  return loss, metrics


def dmd_generator_loss(x, models: dict[str, WanDiT], params, batch, rng, *, guidance: float, shift: float,
                       t_min: float = 20.0, t_max: float = 980.0, frame_mask=None):
  """dmd_loss with the scores as DiTs: models and params {"teacher": ..., "critic": ...} (both frozen
  here), batch {"context": [B, Lt, text_dim], "negative_context": [1 or B, Lt, text_dim]}; guidance in
  cfg_x0's form (4.0 = Self-Forcing's 3.0; see scores.py)."""
  frozen = jax.lax.stop_gradient(params)
  real = teacher_x0_fn(models["teacher"], frozen["teacher"], batch["context"], batch["negative_context"], guidance)
  fake = conditional_x0_fn(models["critic"], frozen["critic"], batch["context"])
  return dmd_loss(x, real, fake, rng, shift=shift, t_min=t_min, t_max=t_max, frame_mask=frame_mask)
