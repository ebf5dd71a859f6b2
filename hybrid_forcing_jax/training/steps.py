"""The training step, and the project's only `jax.value_and_grad`.

A step differentiates a loss (a pure function of (params, batch, rng), training/losses/) with respect to
the float32 master weights through their compute copy, applies the optimiser, and advances the EMA when
the optimiser applied an update. Sharding is decided at the jit boundary only (`jit_train_step`).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from hybrid_forcing_jax.training.optim import cast_for_compute, current_learning_rate, ema_update, update_progress

LossFn = Callable  # (params, batch, rng) -> (loss scalar float32, metrics dict of scalars)


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *, ema_decay: float, ema_start: int,
                    compute_dtype):
  """-> train_step(train_state, batch, rng) -> (train_state, metrics).

  rng: the run's base key (train_state.rng). The loss gets it folded with train_state.step, so every
  batch draws fresh randomness; the loss draws per-example values over the whole (global) batch, so every
  example, whichever device holds it, gets its own (unlike the peers' identical seeds per rank, D3),
  and threefry's partitionable mode makes the draws independent of the mesh.
  compute_dtype: what optim.cast_for_compute takes (a dtype, or the model's storage-dtype tree).
  train_state.step counts calls; under gradient accumulation the EMA counts applied updates.
  metrics: the loss's own metrics plus loss, grad_norm (of the raw gradient, before clipping) and lr.
  """
  def train_step(state, batch, rng):
    step_rng = jax.random.fold_in(rng, state.step)

    def loss_of_masters(masters):
      return loss_fn(cast_for_compute(masters, compute_dtype), batch, step_rng)

    (loss, metrics), grads = jax.value_and_grad(loss_of_masters, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    applied, update_index = update_progress(opt_state, state.step)
    ema = jax.tree.map(lambda new, old: jnp.where(applied, new, old),
                       ema_update(state.ema, params, update_index, ema_decay, ema_start), state.ema)
    metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads), "lr": current_learning_rate(opt_state)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema=ema), metrics

  return train_step


def jit_train_step(train_step, state_shardings, batch_sharding: NamedSharding, frozen_shardings=None):
  """The jitted step(state, batch, rng[, frozen]) with the shardings of sharding.py: the state stays
  where its shardings put it (and its buffers are donated), the batch is split over the mesh, key and
  metrics are replicated; with `frozen_shardings`, the step takes a 4th argument, parameters it reads
  and never trains (DMD's teacher), which stay where those shardings put them."""
  replicated = NamedSharding(batch_sharding.mesh, P())
  frozen = () if frozen_shardings is None else (frozen_shardings,)
  return jax.jit(train_step, in_shardings=(state_shardings, batch_sharding, replicated, *frozen),
                 out_shardings=(state_shardings, replicated), donate_argnums=0)
