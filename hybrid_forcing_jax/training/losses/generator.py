"""The generator's loss in DMD distillation: DMD (Eq. 2) on its own self-forcing rollout, plus, in phase 2,
the teacher regulariser (Eq. 9):

  L_G = L_DMD(x) + 0.05 * [e == 0] * mean_masked((x - sg(x_teacher))^2),

x = the loss window of the rollout (training/rollout.py: one exit step e, gradient only through the
window's exit forwards, a long rollout's first window chunk masked), L_DMD as training/losses/dmd.py
(real score = the frozen teacher with CFG against the negative prompt, fake score = the frozen critic),
x_teacher = the teacher's `regulariser_steps`-step CFG Euler sample from the window's noise: computed in
the step ("online", only when e == 0) or read from the batch ("records", made by make_teacher_rollouts
from the example's noise key). Nothing reaches the teacher or the critic: both are frozen inputs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from hybrid_forcing_jax.training.dmd_setup import DmdSetup
from hybrid_forcing_jax.training.guidance import text_kv
from hybrid_forcing_jax.training.losses.dmd import dmd_generator_loss
from hybrid_forcing_jax.training.losses.regulariser import regulariser_loss
from hybrid_forcing_jax.training.losses.scores import teacher_rollout_fn
from hybrid_forcing_jax.training.rollout import Rollout, draw_rollout_plan, self_forcing_rollout


def generator_loss(gen_params, frozen, batch, rng, *, setup: DmdSetup, exit_step=None):
  """-> (loss float32 scalar, metrics).

  gen_params: the generator in compute dtypes (differentiated); frozen: {"teacher", "critic",
  "negative_context"[, "vae"]} (dmd_setup.py); batch: "context" [B, Lt, text_dim]; "noise_key" (uint32
  key data [B, 2]; optional, else drawn from rng): each example's noise key (rollout.window_noise), which
  make_teacher_rollouts drew the target from; "teacher_latents" [B, loss_frames, h, w, C] (regulariser
  source "records": both are required); rng: the step's key, the same on every device (it draws the
  rollout plan); exit_step: as generator_rollout's. Metrics: dmd_loss, regulariser_loss (weighted),
  regulariser_mse, regulariser_active, exit_step, rollout_chunks and DMD's own.
  """
  plan_key, noise_key, dmd_key = jax.random.split(rng, 3)
  records = setup.regulariser_weight > 0 and setup.regulariser_source == "records"
  if records:
    _require(batch, ("noise_key", "teacher_latents"))
  if "noise_key" in batch:
    noise_keys = jax.random.wrap_key_data(batch["noise_key"])
  else:
    noise_keys = jax.random.split(noise_key, batch["context"].shape[0])
  rollout = generator_rollout(setup, gen_params, frozen, batch["context"], plan_key, noise_keys, grad=True,
                              exit_step=exit_step)
  models = {"teacher": setup.teacher, "critic": setup.critic}
  scores = {"teacher": frozen["teacher"], "critic": frozen["critic"]}
  dmd, metrics = dmd_generator_loss(
      rollout.video, models, scores, {"context": batch["context"], "negative_context": frozen["negative_context"]},
      dmd_key, guidance=setup.guidance, shift=setup.shift, t_min=setup.t_min, t_max=setup.t_max,
      frame_mask=rollout.frame_mask)
  metrics = {**metrics, "dmd_loss": dmd, "exit_step": rollout.exit_step.astype(jnp.float32),
             "rollout_chunks": rollout.num_chunks.astype(jnp.float32)}
  if setup.regulariser_weight <= 0:
    return dmd, metrics
  if records:
    target = lambda: batch["teacher_latents"]
  else:
    target = teacher_rollout_fn(setup.teacher, frozen["teacher"], rollout.noise, batch["context"],
                                frozen["negative_context"], num_steps=setup.regulariser_steps,
                                shift=setup.regulariser_shift, guidance=setup.regulariser_guidance)
  reg, reg_metrics = regulariser_loss(rollout.video, rollout.exit_step, target, weight=setup.regulariser_weight,
                                      frame_mask=rollout.frame_mask)
  return dmd + reg, {**metrics, **reg_metrics, "regulariser_loss": reg}


def generator_rollout(setup: DmdSetup, gen_params, frozen, context, plan_key, noise_keys, *, grad: bool,
                      exit_step=None) -> Rollout:
  """The generator's rollout for prompts `context` [B, Lt, text_dim]: its length and exit step drawn from
  plan_key, the prompts' K/V from the generator's own parameters (a constant in the stream).
  exit_step: None (the trainer: drawn) or an int / traced int32 that replaces the draw, so that
  benchmarks/bench_dmd_breakdown.py can time each exit step in one compiled program."""
  num_chunks, drawn_exit_step = draw_rollout_plan(plan_key, min_chunks=setup.min_chunks, max_chunks=setup.max_chunks,
                                                  num_steps=len(setup.stream.denoising_steps))
  exit_step = drawn_exit_step if exit_step is None else exit_step
  vae = None if setup.vae is None else (setup.vae, frozen["vae"])
  kv = text_kv(setup.generator, jax.lax.stop_gradient(gen_params), context)
  return self_forcing_rollout(setup.generator, gen_params, setup.stream, kv, noise_keys, num_chunks=num_chunks,
                              exit_step=exit_step, latent_hw=setup.latent_hw, loss_frames=setup.loss_frames,
                              context_noise=setup.context_noise, context_key=jax.random.fold_in(plan_key, 1),
                              grad=grad, vae=vae)


def _require(batch, keys) -> None:
  missing = [k for k in keys if k not in batch]
  if missing:
    raise KeyError(f"generator_loss: regulariser_source 'records' needs batch keys {list(keys)}; missing {missing} "
                   "(the teacher-rollout records of make_teacher_rollouts)")
