"""The critic's loss in DMD distillation (DMD2 Sec. 4; Self-Forcing `model/dmd.py::critic_loss`;
training_spec.md 2): the frozen generator's own rollout, entirely outside the gradient (a fresh plan and
fresh noise), then flow matching of the critic on it (training/losses/critic.py):

  L_critic = mean((v_critic(x_t, t) - (eps - x))^2)    over all loss_frames frames, unmasked,

x_t = (1 - sigma) x + sigma eps with t from DMD's law. Only the critic's parameters get a gradient.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from hybrid_forcing_jax.training.dmd_setup import DmdSetup
from hybrid_forcing_jax.training.losses.critic import critic_loss as critic_flow_loss
from hybrid_forcing_jax.training.losses.generator import generator_rollout
from hybrid_forcing_jax.training.losses.scores import conditional_x0_fn


def critic_loss(critic_params, frozen, batch, rng, *, setup: DmdSetup, exit_step=None):
  """-> (loss float32 scalar, metrics). critic_params: the critic in compute dtypes (differentiated);
  frozen: {"generator"[, "vae"]} (the rest of dmd_setup.py's frozen inputs may ride along); batch:
  "context" [B, Lt, text_dim]; rng: the step's key, the same on every device; exit_step: as
  generator_rollout's. Metrics: critic_t, critic_exit_step, critic_rollout_chunks."""
  plan_key, noise_key, t_key = jax.random.split(rng, 3)
  context = batch["context"]
  noise_keys = jax.random.split(noise_key, context.shape[0])
  rollout = generator_rollout(setup, jax.lax.stop_gradient(frozen["generator"]), frozen, context, plan_key, noise_keys,
                              grad=False, exit_step=exit_step)
  fake = conditional_x0_fn(setup.critic, critic_params, context)
  loss, metrics = critic_flow_loss(rollout.video, fake, t_key, shift=setup.shift, t_min=setup.t_min,
                                   t_max=setup.t_max)
  return loss, {**metrics, "critic_exit_step": rollout.exit_step.astype(jnp.float32),
                "critic_rollout_chunks": rollout.num_chunks.astype(jnp.float32)}
