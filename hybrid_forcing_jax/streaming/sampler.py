"""The few-step streaming sampler: one jitted step per chunk (or its two phases), a scan rollout; the same
functions run the training rollout.

Per chunk (Self-Forcing's CausalInferencePipeline, peers_pytorch.md 2.3): start from fresh noise at
t = 1000; at each t of the warped schedule [1000, 937.5, 833.33, 625] predict the velocity v, take
x0 = x_t - sigma(t) v and re-noise x0 with fresh noise to the next t, x = (1 - sigma') x0 + sigma' eps;
the last x0 is the chunk. Then one forward of the clean chunk at t = 0 writes its K/V into the cache
(and absorbs the frames it pushes out of the window into the linear memory). The 4 denoising forwards
read the cache and never write it. Everything is traced (the frame counter lives in the state), so
the step compiles once and never syncs with the host. The endless stream, with the VAE decode and
prompt switches, is `pipeline.StreamingPipeline.frames`.

Training (Self-Forcing's backward simulation, training_spec.md) is the same loop with three hooks:
  * `exit_step` e (a traced int in [0, N)): the chunk stops at step e and returns that step's x0. Steps
    0..e-1 run as at inference (each x0 re-noised with FRESH noise to the next t; the peers' rollout
    skipped that re-noising, defect D1) but entirely outside the gradient: frozen parameters, frozen
    state, `lax.stop_gradient` on their result.
  * `grad_params`: the parameters of the exit step's forward, the only forward the gradient sees
    (default: `params`). Passing a separate copy makes "no gradient elsewhere" checkable.
  * `context_noise`: the timestep at which the clean chunk is re-noised before the cache-write forward
    (Self-Forcing's `context_noise`, 0 = the clean chunk). The write is always outside the gradient:
    it runs on frozen parameters and the frozen chunk, so the cache never carries gradient.
The prompt's cross-attention K/V in the state carry no gradient either (state.init_state), so in a
rollout only the exit forwards are differentiated, each against a cache of constants. The defaults
(exit_step None, context_noise 0) are inference and trace to the inference computation.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from hybrid_forcing_jax import flow
from hybrid_forcing_jax.dit import WanDiT
from hybrid_forcing_jax.streaming import positions
from hybrid_forcing_jax.streaming.config import StreamConfig
from hybrid_forcing_jax.streaming.state import StreamState, cache_view, commit_chunk, init_state


def chunk_noise(key, chunk_index, num_steps: int, shape):
  """The noise of chunk `chunk_index`: [num_steps, *shape] float32; entry 0 starts the chunk, entry i
  re-noises after step i-1 (the last entry re-noises to sigma 0 and has no effect)."""
  return jax.random.normal(jax.random.fold_in(key, chunk_index), (num_steps,) + tuple(shape), jnp.float32)


def context_noise_of(key, chunk_index, shape):
  """The noise that re-noises chunk `chunk_index` for its cache write: a stream of its own, independent
  of the chunk's denoising noise."""
  return jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, chunk_index), 1), tuple(shape), jnp.float32)


def stream_forward(model: WanDiT, params, cfg: StreamConfig, state: StreamState, x, t):
  """One DiT forward of the current chunk x [B, F, h, w, C] at timestep t (scalar) against the cache.
  Returns (velocity, (k, v)) with the chunk's un-rotated K/V per layer."""
  cache, view = cache_view(cfg, model.config, state)
  b, f = x.shape[:2]
  return model.apply({"params": params}, x, jnp.full((b, f), t, jnp.float32), text_kv=(state.text_k, state.text_v),
                     frame_positions=positions.query_positions(cfg, state.frame), cache=cache, view=view,
                     stream_config=cfg, method=WanDiT.stream)


def _x0(model: WanDiT, params, cfg: StreamConfig, state: StreamState, x, t, sigma):
  vel, _ = stream_forward(model, params, cfg, state, x, t)
  return flow.x0_from_velocity(x, vel.astype(jnp.float32), sigma)


def denoise_chunk(model: WanDiT, params, cfg: StreamConfig, state: StreamState, *, exit_step=None,
                  grad_params=None, noise=None):
  """The next chunk's latents [B, F, h, w, C] float32: the denoising forwards only; the cache is read,
  not written. Inference (defaults): every step, the last x0. Training: the x0 of step `exit_step`
  (int, traced or not), predicted with `grad_params`; the steps before it carry no gradient.
  noise: the chunk's noise [num_steps, B, F, h, w, C] as `chunk_noise` lays it out (default: drawn
  from the state's key); a training rollout passes its own (per-example noise)."""
  b, _, h, w, c = state.latents.shape
  shape = (b, cfg.chunk_frames, h, w, c)
  num_steps = len(cfg.denoising_steps)
  ts = jnp.asarray(cfg.timesteps(), jnp.float32)
  sig = jnp.asarray(cfg.sigmas(), jnp.float32)
  sig_next = jnp.concatenate([sig[1:], jnp.zeros((1,), jnp.float32)])
  if noise is None:
    noise = chunk_noise(state.key, state.frame // cfg.chunk_frames, num_steps, shape)
  eps_next = jnp.concatenate([noise[1:], jnp.zeros_like(noise[:1])])

  if exit_step is None and grad_params is None:
    def denoise(x, inputs):
      t, s, s_next, eps = inputs
      return flow.add_noise(_x0(model, params, cfg, state, x, t, s), eps, s_next), None

    # With sigma' = 0 after the last step the carry is exactly that step's x0.
    clean, _ = jax.lax.scan(denoise, noise[0], (ts, sig, sig_next, eps_next))
    return clean

  exit_step = num_steps - 1 if exit_step is None else jnp.asarray(exit_step, jnp.int32)
  frozen_params, frozen_state = jax.lax.stop_gradient((params, state))

  def renoised(i, x):   # step i outside the gradient, its x0 re-noised with fresh noise to sigma_{i+1}
    x0 = _x0(model, frozen_params, cfg, frozen_state, x, ts[i], sig[i])
    return flow.add_noise(x0, eps_next[i], sig_next[i])

  # A traced bound makes this a while loop: never differentiated, which the stop_gradients guarantee.
  x = jax.lax.stop_gradient(jax.lax.fori_loop(0, exit_step, renoised, noise[0]))
  return _x0(model, params if grad_params is None else grad_params, cfg, frozen_state, x, ts[exit_step],
             sig[exit_step])


def write_chunk(model: WanDiT, params, cfg: StreamConfig, state: StreamState, clean, *,
                context_noise: float = 0.0) -> StreamState:
  """The cache write: one forward of the chunk at timestep `context_noise` (0: the clean chunk itself;
  otherwise re-noised to that t with its own noise), its K/V committed to the state. Outside the
  gradient: the state it returns is a constant with respect to `params` and `clean`."""
  params, state, clean = jax.lax.stop_gradient((params, state, clean))
  x = clean
  if context_noise:
    sigma = context_noise / cfg.num_train_timesteps
    x = flow.add_noise(clean, context_noise_of(state.key, state.frame // cfg.chunk_frames, clean.shape), sigma)
  _, (new_k, new_v) = stream_forward(model, params, cfg, state, x, context_noise)
  return commit_chunk(cfg, state, new_k, new_v, clean)


def chunk_step(model: WanDiT, params, cfg: StreamConfig, state: StreamState, *, exit_step=None, grad_params=None,
               context_noise: float = 0.0, noise=None):
  """Generate the next chunk. Returns (new state, latents [B, F, h, w, C] float32): the clean chunk at
  inference, the exit step's x0 in training (see the module docstring); the cache gets that chunk."""
  chunk = denoise_chunk(model, params, cfg, state, exit_step=exit_step, grad_params=grad_params, noise=noise)
  return write_chunk(model, params, cfg, state, chunk, context_noise=context_noise), chunk


@functools.lru_cache(maxsize=None)
def jitted_step(model: WanDiT, cfg: StreamConfig, donate: bool = True):
  """step(params, state) -> (state, chunk), compiled once per (model, cfg); the state is donated so
  the cache is updated in place."""
  fn = lambda params, state: chunk_step(model, params, cfg, state)
  return jax.jit(fn, donate_argnums=(1,) if donate else ())


@functools.lru_cache(maxsize=None)
def jitted_phases(model: WanDiT, cfg: StreamConfig):
  """(denoise(params, state) -> chunk, write(params, state, chunk) -> state): `chunk_step` in two
  executables, so a consumer can queue work (the VAE decode) between a chunk's denoising and its
  cache write and get the chunk one forward sooner. `write` donates the state."""
  def denoise(params, state):   # named functions: programs that jax's compile log and profiles can name
    return denoise_chunk(model, params, cfg, state)

  def write(params, state, clean):
    return write_chunk(model, params, cfg, state, clean)

  return jax.jit(denoise), jax.jit(write, donate_argnums=(1,))


def rollout(model: WanDiT, params, cfg: StreamConfig, state: StreamState, num_chunks: int, *, exit_step=None,
            grad_params=None, context_noise: float = 0.0):
  """A fixed number of chunks under `jax.lax.scan`: (final state, chunks [N, B, F, h, w, C]).

  The training hooks are `chunk_step`'s; `exit_step` is one step for every chunk (a scalar, as
  Self-Forcing draws it) or one per chunk ([N] int)."""
  if exit_step is None:
    step = lambda s, _: chunk_step(model, params, cfg, s, grad_params=grad_params, context_noise=context_noise)
    return jax.lax.scan(step, state, None, length=num_chunks)
  exits = jnp.broadcast_to(jnp.asarray(exit_step, jnp.int32), (num_chunks,))
  step = lambda s, e: chunk_step(model, params, cfg, s, exit_step=e, grad_params=grad_params,
                                 context_noise=context_noise)
  return jax.lax.scan(step, state, exits)


@functools.partial(jax.jit, static_argnums=(0,))
def prompt_kv(model: WanDiT, params, context):
  """Every layer's cross-attention K/V for umT5 embeddings context [B, Lt, text_dim] (jitted: run eagerly,
  the 30-layer scan would be traced anew on each call and delay the first frame)."""
  return model.apply({"params": params}, context, method=WanDiT.text_kv)


def start(model: WanDiT, params, cfg: StreamConfig, context, key, latent_hw, dtype=None) -> StreamState:
  """A fresh stream for a prompt (umT5 embeddings context [B, Lt, text_dim])."""
  return _start(model, params, cfg, context, key, tuple(latent_hw), dtype or model.dtype)


def lowered_start(model: WanDiT, params, cfg: StreamConfig, context, key, latent_hw, dtype=None):
  """`start`'s program for these arguments (arrays, or their shapes), lowered: compile it ahead of the call."""
  return _start.lower(model, params, cfg, context, key, tuple(latent_hw), dtype or model.dtype)


@functools.partial(jax.jit, static_argnums=(0, 2, 5, 6))
def _start(model, params, cfg, context, key, latent_hw, dtype):
  return init_state(cfg, model.config, prompt_kv(model, params, context), key, latent_hw, dtype)


def recache_frames(cfg: StreamConfig, state: StreamState):
  """The cached frames in chronological order, their RoPE positions and, per frame, how many leading
  frames it sees block-causally (its own chunk included); empty slots see nothing and are not written."""
  frames, slots, n_valid = positions.cached_frames(cfg, state.frame)
  pos = positions.frame_positions(cfg, state.frame, frames)
  chunk = jnp.where(frames >= 0, frames // cfg.chunk_frames, jnp.iinfo(jnp.int32).max)
  sees = jnp.sum((chunk[None, :] <= chunk[:, None]) & (frames[None, :] >= 0), axis=1)
  return frames, slots, pos, jnp.where(frames >= 0, sees, 0).astype(jnp.int32)


def _switch(model: WanDiT, params, cfg: StreamConfig, state: StreamState, text_kv, recache: bool):
  text_k, text_v = jax.lax.stop_gradient(text_kv)   # a constant, as in state.init_state
  state = state.replace(text_k=text_k.astype(state.text_k.dtype), text_v=text_v.astype(state.text_v.dtype))
  if not recache or cfg.cache_slots == 0:
    return state
  frames, slots, pos, sees = recache_frames(cfg, state)
  x = jnp.take(state.latents, slots, axis=1)
  b, n = x.shape[:2]
  k, v = model.apply({"params": params}, x, jnp.zeros((b, n), jnp.float32), text_kv=(state.text_k, state.text_v),
                      frame_positions=pos, visible_frames=sees, method=WanDiT.recache)
  tokens = k.shape[2] // n
  k = k.reshape(k.shape[:2] + (n, tokens) + k.shape[3:])
  v = v.reshape(v.shape[:2] + (n, tokens) + v.shape[3:])
  # Scatter back to the slots; empty entries (frame -1) point at slot 0 and must not overwrite it.
  valid = (frames >= 0)[None, None, :, None, None, None]
  order = jnp.where(frames >= 0, slots, cfg.cache_slots)   # out of range -> dropped
  new_k = state.k.at[:, :, order].set(jnp.where(valid, k, 0).astype(state.k.dtype), mode="drop")
  new_v = state.v.at[:, :, order].set(jnp.where(valid, v, 0).astype(state.v.dtype), mode="drop")
  return state.replace(k=new_k, v=new_v)


@functools.partial(jax.jit, static_argnums=(0, 2, 5))
def _switch_jit(model, params, cfg, state, text_kv, recache):
  return _switch(model, params, cfg, state, text_kv, recache)


def switch_prompt(model: WanDiT, params, cfg: StreamConfig, state: StreamState, text_kv, *, recache: bool = True):
  """Switch the prompt mid-stream: new cross-attention K/V and, with `recache`, the cached frames
  (sink + window) re-encoded under the new prompt by re-running their clean latents at t = 0, as
  LongLive does, so the window stops carrying the old prompt's K/V. The linear memory is kept."""
  return _switch_jit(model, params, cfg, state, text_kv, recache)
