"""The few-step streaming sampler: one jitted step per chunk (or its two phases), a scan rollout.

Per chunk (Self-Forcing's CausalInferencePipeline, peers_pytorch.md 2.3): start from fresh noise at
t = 1000; at each t of the warped schedule [1000, 937.5, 833.33, 625] predict the velocity v, take
x0 = x_t - sigma(t) v and re-noise x0 with fresh noise to the next t, x = (1 - sigma') x0 + sigma' eps;
the last x0 is the chunk. Then one forward of the clean chunk at t = 0 writes its K/V into the cache
(and absorbs the frames it pushes out of the window into the linear memory). The 4 denoising forwards
read the cache and never write it. Everything is traced (the frame counter lives in the state), so
the step compiles once and never syncs with the host. The endless stream, with the VAE decode and
prompt switches, is `pipeline.StreamingPipeline.frames`.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from hybrid_forcing_jax.dit import AttentionLayout, WanDiT
from hybrid_forcing_jax.streaming import positions
from hybrid_forcing_jax.streaming.config import StreamConfig
from hybrid_forcing_jax.streaming.state import StreamState, commit_chunk, init_state


def chunk_noise(key, chunk_index, num_steps: int, shape):
  """The noise of chunk `chunk_index`: [num_steps, *shape] float32; entry 0 starts the chunk, entry i
  re-noises after step i-1 (the last entry re-noises to sigma 0 and has no effect)."""
  return jax.random.normal(jax.random.fold_in(key, chunk_index), (num_steps,) + tuple(shape), jnp.float32)


def stream_forward(model: WanDiT, params, cfg: StreamConfig, state: StreamState, x, t):
  """One DiT forward of the current chunk x [B, F, h, w, C] at timestep t (scalar) against the cache.
  Returns (velocity, (k, v)) with the chunk's un-rotated K/V per layer."""
  frame = state.frame
  frames, slots, n_valid = positions.cached_frames(cfg, frame)
  stream = dict(
      layers=dict(k=state.k, v=state.v, lin_s=state.lin_s, lin_z=state.lin_z),
      shared=dict(gather=slots, n_valid=n_valid, has_linear=state.lin_count > 0),
      key_positions=positions.frame_positions(cfg, frame, frames))
  b, f = x.shape[:2]
  tt = jnp.full((b, f), t, jnp.float32)
  return model.apply({"params": params}, x, tt, text_kv=(state.text_k, state.text_v),
                     frame_positions=positions.query_positions(cfg, frame), stream=stream,
                     layout=AttentionLayout.streaming(cfg))


def denoise_chunk(model: WanDiT, params, cfg: StreamConfig, state: StreamState):
  """The next chunk's clean latents [B, F, h, w, C] float32: the denoising forwards only; the cache is
  read, not written."""
  b, _, h, w, c = state.latents.shape
  shape = (b, cfg.chunk_frames, h, w, c)
  ts = jnp.asarray(cfg.timesteps(), jnp.float32)
  sig = jnp.asarray(cfg.sigmas(), jnp.float32)
  sig_next = jnp.concatenate([sig[1:], jnp.zeros((1,), jnp.float32)])
  noise = chunk_noise(state.key, state.frame // cfg.chunk_frames, len(cfg.denoising_steps), shape)

  def denoise(x, inputs):
    t, s, s_next, eps = inputs
    vel, _ = stream_forward(model, params, cfg, state, x, t)
    x0 = x - s * vel.astype(jnp.float32)
    return (1.0 - s_next) * x0 + s_next * eps, None

  # With sigma' = 0 after the last step the carry is exactly that step's x0.
  eps_next = jnp.concatenate([noise[1:], jnp.zeros_like(noise[:1])])
  clean, _ = jax.lax.scan(denoise, noise[0], (ts, sig, sig_next, eps_next))
  return clean


def write_chunk(model: WanDiT, params, cfg: StreamConfig, state: StreamState, clean) -> StreamState:
  """The cache write: one forward of the clean chunk at t = 0, its K/V committed to the state."""
  _, (new_k, new_v) = stream_forward(model, params, cfg, state, clean, 0.0)
  return commit_chunk(cfg, state, new_k, new_v, clean)


def chunk_step(model: WanDiT, params, cfg: StreamConfig, state: StreamState):
  """Generate the next chunk. Returns (new state, clean latents [B, F, h, w, C] float32)."""
  clean = denoise_chunk(model, params, cfg, state)
  return write_chunk(model, params, cfg, state, clean), clean


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
  return (jax.jit(lambda params, state: denoise_chunk(model, params, cfg, state)),
          jax.jit(lambda params, state, clean: write_chunk(model, params, cfg, state, clean), donate_argnums=(1,)))


def rollout(model: WanDiT, params, cfg: StreamConfig, state: StreamState, num_chunks: int):
  """A fixed number of chunks under `jax.lax.scan`: (final state, chunks [N, B, F, h, w, C])."""
  return jax.lax.scan(lambda s, _: chunk_step(model, params, cfg, s), state, None, length=num_chunks)


@functools.partial(jax.jit, static_argnums=(0,))
def prompt_kv(model: WanDiT, params, context):
  """Every layer's cross-attention K/V for umT5 embeddings context [B, Lt, text_dim] (jitted: run eagerly,
  the 30-layer scan would be traced anew on each call and delay the first frame)."""
  return model.apply({"params": params}, context, method=WanDiT.text_kv)


def start(model: WanDiT, params, cfg: StreamConfig, context, key, latent_hw, dtype=None) -> StreamState:
  """A fresh stream for a prompt (umT5 embeddings context [B, Lt, text_dim])."""
  return _start(model, params, cfg, context, key, tuple(latent_hw), dtype or model.dtype)


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
  state = state.replace(text_k=text_kv[0].astype(state.text_k.dtype), text_v=text_kv[1].astype(state.text_v.dtype))
  if not recache or cfg.cache_slots == 0:
    return state
  frames, slots, pos, sees = recache_frames(cfg, state)
  x = jnp.take(state.latents, slots, axis=1)
  b, n = x.shape[:2]
  _, (k, v) = model.apply({"params": params}, x, jnp.zeros((b, n), jnp.float32), text_kv=(state.text_k, state.text_v),
                          frame_positions=pos, stream=dict(shared=dict(query_kv_frames=sees)),
                          layout=AttentionLayout.streaming(cfg, recache=True))
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
