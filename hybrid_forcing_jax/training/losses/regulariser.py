"""The teacher regulariser of phase 2: Eq. 9 of the paper (Hybrid Forcing `model/dmd_reflow.py`, its
"reflow" loss; training_spec.md 3).

When the rollout's exit step is 0, the student's step-0 x0 on the last 21 frames (the generator output
then) is pulled toward the teacher's 25-step CFG rollout from the same noise:
  loss = weight * mean_masked((x0_student - sg(x0_teacher))^2),   weight 0.05,
masked like DMD. For any other exit step the loss is 0 and the teacher does not run: the condition is a
traced `lax.cond`, so one compiled step serves every exit step. The weight is applied here; the trainer
adds this loss to DMD's as it is. Weight 0 turns it off (phase 1) without tracing the teacher.

The teacher's target comes from a callable, so it can be a precomputed record or an online rollout
(`training.teacher.euler_trajectory`, at the configured guidance: the published code hard-codes
CFG 3.5, u + 3.5 (c - u) on the velocity, against a config that says 3.0; training_spec.md 3, D7).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from hybrid_forcing_jax.training.losses.reduction import loss_dtype, mean_square


def regulariser_loss(student_x0, exit_step, teacher_x0_fn, *, weight: float = 0.05, frame_mask=None):
  """-> (loss, metrics). student_x0 [B, F, h, w, C] (with gradient); exit_step: the rollout's exit
  step (int scalar, may be traced); teacher_x0_fn: () -> the teacher's clean latent [B, F, h, w, C]
  from the same noise, traced into the exit-step-0 branch only; frame_mask: as in dmd_loss.
  Metrics: regulariser_mse (unweighted; 0 when inactive), regulariser_active (0 or 1).
  """
  dtype = loss_dtype()
  zero = jnp.zeros((), dtype)
  if weight == 0:  # off (phase 1), decided statically: the teacher is not even traced
    return zero, {"regulariser_mse": zero, "regulariser_active": jnp.zeros((), jnp.float32)}
  active = jnp.asarray(exit_step) == 0

  def mse():
    target = jax.lax.stop_gradient(teacher_x0_fn()).astype(dtype)
    return mean_square(student_x0.astype(dtype) - target, frame_mask)

  value = jax.lax.cond(active, mse, lambda: zero)
  return weight * value, {"regulariser_mse": value, "regulariser_active": active.astype(jnp.float32)}
