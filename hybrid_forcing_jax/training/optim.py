"""The optimiser, the EMA of the generator and the bf16 compute copy of the fp32 master weights.

AdamW on float32 master weights, after global-norm clipping, as Self-Forcing (training_spec.md 2: betas
(0, 0.999), weight decay 0.01 on every parameter, clip 10, constant LR) and CausVid's ODE init (betas
(0.9, 0.999)). Additions the peers lack: an optional linear warm-up, and gradient accumulation through
`optax.MultiSteps` (SF#15, SF#90). The EMA follows Self-Forcing's `EMA_FSDP` (decay 0.99, created from
the weights at step 200, updated after every generator update), kept in float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def learning_rate_schedule(optim_cfg) -> optax.Schedule:
  """lr * min(1, (n + 1) / warmup_steps) for the n-th update: the first update already moves the
  weights, and the rate is constant from update warmup_steps - 1 on; warmup_steps 0 = constant."""
  lr, warmup = float(optim_cfg.lr), int(optim_cfg.warmup_steps)
  if warmup == 0:
    return optax.constant_schedule(lr)
  return lambda count: lr * jnp.minimum(1.0, (count + 1) / warmup)


def make_optimizer(optim_cfg) -> optax.GradientTransformation:
  """Clip by global norm, then AdamW with the stage's b1/b2/eps/weight decay and the warm-up schedule;
  with grad_accum > 1, updates are applied every grad_accum calls with the mean of their gradients.

  optim_cfg: `config.optim` (lr, b1, b2, eps, weight_decay, clip_norm, warmup_steps, grad_accum); the
  optimiser state takes the dtype of the parameters it is given, so pass float32 masters.
  """
  _check(optim_cfg)
  # inject_hyperparams keeps the learning rate of the latest update in the state, for `current_learning_rate`.
  adamw = optax.inject_hyperparams(optax.adamw)(
      learning_rate=learning_rate_schedule(optim_cfg), b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
      weight_decay=optim_cfg.weight_decay)
  tx = optax.chain(optax.clip_by_global_norm(optim_cfg.clip_norm), adamw)
  if optim_cfg.grad_accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=int(optim_cfg.grad_accum)).gradient_transformation()
  return tx


def _check(optim_cfg) -> None:
  for key, ok, why in (
      ("lr", optim_cfg.lr > 0, "must be > 0"),
      ("clip_norm", optim_cfg.clip_norm > 0, "must be > 0"),
      ("warmup_steps", optim_cfg.warmup_steps >= 0, "must be >= 0"),
      ("grad_accum", optim_cfg.grad_accum >= 1, "must be >= 1")):
    if not ok:
      raise ValueError(f"optim.{key}: {why}, got {getattr(optim_cfg, key)!r}")


def current_learning_rate(opt_state) -> jax.Array:
  """The learning rate of the latest applied update (the first one's before any update)."""
  return optax.tree_utils.tree_get(opt_state, "learning_rate", filtering=lambda _, v: isinstance(v, jax.Array))


def update_progress(opt_state, calls_done):
  """-> (applied, index): whether the call that produced `opt_state` changed the weights, and the
  0-based index of the latest applied update. calls_done counts optimizer calls before this one.

  Under gradient accumulation only every grad_accum-th call applies an update, so the EMA (and anything
  else counted in updates) must follow the optimiser, not the call count.
  """
  if isinstance(opt_state, optax.MultiStepsState):
    return opt_state.mini_step == 0, opt_state.gradient_step - 1
  return jnp.bool_(True), calls_done


def init_ema(params):
  """The EMA before any update: a float32 copy of the weights in buffers of its own (the jitted step
  donates the train state, and one buffer cannot be donated twice)."""
  return jax.tree.map(lambda p: jnp.array(p, jnp.float32, copy=True), params)


def ema_update(ema, params, step, decay: float, start: int):
  """The float32 EMA after update number `step` (0-based) produced `params`.

  Before `start` the EMA is a copy of the weights, so at `start` it begins from the weights of that
  moment, as Self-Forcing's EMA_FSDP created at step >= ema_start and updated after every step:
  ema <- decay ema + (1 - decay) params.
  """
  keep = jnp.where(step < start, 0.0, decay)
  return jax.tree.map(lambda e, p: keep * e + (1.0 - keep) * p.astype(jnp.float32), ema, params)


def cast_for_compute(params, dtype):
  """The compute copy of the float32 master weights.

  dtype: a pytree of dtypes (or ShapeDtypeStructs) matching params, e.g. `dit.param_shapes(config,
  jnp.bfloat16)`: the model's own storage dtypes, which keep norms, modulation and the time embedding in
  float32 while matmul weights go to bfloat16 (so FSDP gathers bf16). Or one dtype for every floating
  leaf: float32 leaves the cast to the model's matmuls; a single bfloat16 would round the norms too.
  Differentiating through the cast hands float32 gradients back to the masters.
  """
  def cast(p, d):
    d = getattr(d, "dtype", d)
    return p.astype(d) if jnp.issubdtype(p.dtype, jnp.floating) else p

  if isinstance(dtype, (str, type, jnp.dtype)):
    return jax.tree.map(lambda p: cast(p, jnp.dtype(dtype)), params)
  return jax.tree.map(cast, params, dtype)
