"""The training steps, and the project's only `jax.value_and_grad`.

A step differentiates a loss (training/losses/) with respect to ONE tree of float32 master weights
through its compute copy, applies that tree's optimiser, and (for the generator) advances the EMA when the
optimiser applied an update. Other trees the loss reads are frozen inputs: passed in, never differentiated,
returned untouched. Sharding is decided at the jit boundary only (`jit_train_step`, which traces the step
under its mesh so that the model keeps every example's activations and attention on its device).

  ODE init:  make_train_step(loss)            loss(params, batch, rng)
  DMD:       make_dmd_steps(gen_loss, critic_loss, ...)
             gen_loss(gen_params, frozen, batch, rng)        frozen + {"critic": the critic's compute copy}
             critic_loss(critic_params, frozen, batch, rng)  frozen + {"generator": the generator's compute copy}
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from hybrid_forcing_jax.training import sharding
from hybrid_forcing_jax.training.optim import cast_for_compute, current_learning_rate, ema_update, update_progress

LossFn = Callable  # (params[, frozen], batch, rng) -> (loss scalar float32, metrics dict of scalars)


def _update(loss_fn: LossFn, optimizer: optax.GradientTransformation, compute_dtype, masters, opt_state, frozen,
            batch, rng):
  """One optimiser update of `masters` on loss_fn -> (masters, opt_state, metrics): the loss's metrics
  plus loss, grad_norm (of the raw gradient, before clipping) and lr. frozen None: loss_fn(params, batch,
  rng); otherwise loss_fn(params, frozen, batch, rng): frozen is not an argument of the differentiated
  function, so it gets no gradient."""
  def loss_of_masters(m):
    params = cast_for_compute(m, compute_dtype)
    if frozen is None:
      return loss_fn(params, batch, rng)
    return loss_fn(params, frozen, batch, rng)

  (loss, metrics), grads = jax.value_and_grad(loss_of_masters, has_aux=True)(masters)
  updates, opt_state = optimizer.update(grads, opt_state, masters)
  metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads), "lr": current_learning_rate(opt_state)}
  return optax.apply_updates(masters, updates), opt_state, metrics


def _advance_ema(state, params, opt_state, ema_decay: float, ema_start: int):
  """The generator's EMA after an optimiser call that produced params / opt_state at state.step."""
  applied, update_index = update_progress(opt_state, state.step)
  return jax.tree.map(lambda new, old: jnp.where(applied, new, old),
                      ema_update(state.ema, params, update_index, ema_decay, ema_start), state.ema)


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *, ema_decay: float, ema_start: int,
                    compute_dtype):
  """-> train_step(train_state, batch, rng, frozen=None) -> (train_state, metrics): one update of the
  generator (train_state.params), step + 1.

  rng: the run's base key (train_state.rng). The loss gets it folded with train_state.step, so every
  batch draws fresh randomness; the loss draws per-example values over the whole (global) batch, so every
  example, whichever device holds it, gets its own (unlike the peers' identical seeds per rank, D3),
  and threefry's partitionable mode makes the draws independent of the mesh.
  frozen: None (the loss takes (params, batch, rng)) or a pytree the loss reads as its second argument.
  compute_dtype: what optim.cast_for_compute takes (a dtype, or the model's storage-dtype tree).
  train_state.step counts calls; under gradient accumulation the EMA counts applied updates.
  metrics: the loss's own metrics plus loss, grad_norm (of the raw gradient, before clipping) and lr.
  """
  def train_step(state, batch, rng, frozen=None):
    step_rng = jax.random.fold_in(rng, state.step)
    params, opt_state, metrics = _update(loss_fn, optimizer, compute_dtype, state.params, state.opt_state, frozen,
                                         batch, step_rng)
    ema = _advance_ema(state, params, opt_state, ema_decay, ema_start)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema=ema), metrics

  return train_step


def make_dmd_steps(generator_loss: LossFn, critic_loss: LossFn, generator_optimizer: optax.GradientTransformation,
                   critic_optimizer: optax.GradientTransformation, *, ema_decay: float, ema_start: int,
                   generator_dtype, critic_dtype):
  """-> (generator_step, critic_step), each (train_state, batch, rng, frozen) -> (train_state, metrics).

  generator_step updates params, opt_state and the EMA; the critic and its optimiser state pass through
  untouched, and so does step. critic_step updates critic and critic_opt_state and advances step: a
  step counts critic updates (Self-Forcing's count; its loop runs a generator update before every 5th).
  The EMA's start counts steps too (EMA_FSDP is created at step >= 200 and follows generator updates).
  frozen: what neither trains (the teacher, the negative prompt, the VAE: training/dmd_setup.py); each
  step adds the other network's compute copy ({"critic": ...} / {"generator": ...}).
  rng: a base key; each step folds in train_state.step and its role (0 generator, 1 critic), so the
  generator and the critic update of one step draw independent rollouts.
  generator_dtype, critic_dtype: the compute dtypes (optim.cast_for_compute) of the two networks.
  Metrics: the loss's own plus generator_loss / generator_grad_norm / generator_lr, and critic_loss /
  critic_grad_norm / critic_lr.
  """
  def generator_step(state, batch, rng, frozen):
    step_rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), 0)
    frozen = {**frozen, "critic": cast_for_compute(state.critic, critic_dtype)}
    params, opt_state, metrics = _update(generator_loss, generator_optimizer, generator_dtype, state.params,
                                         state.opt_state, frozen, batch, step_rng)
    ema = _advance_ema(state, params, opt_state, ema_decay, ema_start)
    return state.replace(params=params, opt_state=opt_state, ema=ema), _prefixed(metrics, "generator")

  def critic_step(state, batch, rng, frozen):
    step_rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), 1)
    frozen = {**frozen, "generator": cast_for_compute(state.params, generator_dtype)}
    critic, opt_state, metrics = _update(critic_loss, critic_optimizer, critic_dtype, state.critic,
                                         state.critic_opt_state, frozen, batch, step_rng)
    return (state.replace(step=state.step + 1, critic=critic, critic_opt_state=opt_state),
            _prefixed(metrics, "critic"))

  return generator_step, critic_step


def _prefixed(metrics, role: str):
  """loss / grad_norm / lr named after the network they belong to; the loss's own metrics as they are."""
  return {(f"{role}_{k}" if k in ("loss", "grad_norm", "lr") else k): v for k, v in metrics.items()}


def jit_train_step(train_step, state_shardings, batch_sharding: NamedSharding, frozen_shardings=None):
  """The jitted step(state, batch, rng[, frozen]) with the shardings of sharding.py: the state stays
  where its shardings put it (and its buffers are donated), the batch is split over the mesh, key and
  metrics are replicated; with `frozen_shardings`, the step takes a 4th argument, parameters it reads
  and never trains (DMD's teacher), which stay where those shardings put them."""
  replicated = NamedSharding(batch_sharding.mesh, P())
  frozen = () if frozen_shardings is None else (frozen_shardings,)
  return jax.jit(sharding.traced_in_mesh(train_step, batch_sharding.mesh),
                 in_shardings=(state_shardings, batch_sharding, replicated, *frozen),
                 out_shardings=(state_shardings, replicated), donate_argnums=0)
