"""The stream state: one pytree of fixed shapes holding everything a stream needs.

Per layer (stacked on axis 0, scanned with the parameters):
  k, v     [L, B, S + R, T, H, D]  K/V of the sink and ring slots (T tokens per frame), compute dtype.
           Keys are stored after norm_k and WITHOUT RoPE, so relative RoPE can re-rotate them with
           their current positions at every forward.
  lin_s    [L, B, H, D, D] float32  mean over absorbed tokens of phi(k) v^T (Eq. 7), phi = ReLU
  lin_z    [L, B, H, D]    float32  mean over absorbed tokens of phi(k)
  text_k, text_v [L, B, Lt, H, D]   cross-attention K/V of the prompt, a constant: no gradient
           reaches text_embedding or cross_attn.k/v through a stream (a deliberate choice: a training
           rollout trains cross-attention's q/o only; losses that run the DiT on `context` train k/v)
Shared:
  slot_frame [S + R] int32  absolute frame held by each slot, -1 when empty
  latents    [B, S + R, h, w, C] float32  clean latents of the cached frames (for re-caching on a
             prompt switch)
  lin_count  int32  tokens absorbed so far (per layer and batch element)
  frame      int32  frames generated so far = first frame of the next chunk
  key        PRNG key; chunk c draws its noise from fold_in(key, c)
Nothing grows with the video: the linear means replace the evicted frames.

Deliberate differences from the released Hybrid Forcing code (see docs in peers_pytorch.md 1.3, 1.8):
the linear memory holds phi(k) v^T of un-rotated keys (no RoPE in the numerator), is kept in float32
(bf16 running means stop moving after a few hundred chunks), and sink frames are never absorbed, so
no frame is counted twice.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from hybrid_forcing_jax.attention.hybrid import CacheView, LayerCache
from hybrid_forcing_jax.config import WanConfig
from hybrid_forcing_jax.rope import rope_tables
from hybrid_forcing_jax.streaming import positions
from hybrid_forcing_jax.streaming.config import StreamConfig
from hybrid_forcing_jax.streaming.positions import slot_of

_HI = jax.lax.Precision.HIGHEST


@struct.dataclass
class StreamState:
  k: jnp.ndarray
  v: jnp.ndarray
  lin_s: jnp.ndarray
  lin_z: jnp.ndarray
  text_k: jnp.ndarray
  text_v: jnp.ndarray
  slot_frame: jnp.ndarray
  latents: jnp.ndarray
  lin_count: jnp.ndarray
  frame: jnp.ndarray
  key: jnp.ndarray


def frame_tokens(wan: WanConfig, latent_hw: tuple[int, int]) -> int:
  _, ph, pw = wan.patch_size
  h, w = latent_hw
  if h % ph or w % pw:
    raise ValueError(f"latent grid {latent_hw} is not a multiple of the patch size {wan.patch_size[1:]}")
  return (h // ph) * (w // pw)


def init_state(cfg: StreamConfig, wan: WanConfig, text_kv, key, latent_hw: tuple[int, int],
               dtype=jnp.bfloat16) -> StreamState:
  """An empty stream for the prompt whose cross-attention K/V is `text_kv` (from WanDiT.text_kv), held
  under `stop_gradient` (the state carries no gradient, see above)."""
  if wan.patch_size[0] != 1:
    raise ValueError(f"streaming needs temporal patch size 1, got {wan.patch_size}")
  text_k, text_v = jax.lax.stop_gradient(text_kv)
  layers, batch = text_k.shape[:2]
  if layers != wan.num_layers:
    raise ValueError(f"text_kv has {layers} layers, the model {wan.num_layers}")
  h, d, n = wan.num_heads, wan.head_dim, cfg.cache_slots
  t = frame_tokens(wan, latent_hw)
  return StreamState(
      k=jnp.zeros((layers, batch, n, t, h, d), dtype), v=jnp.zeros((layers, batch, n, t, h, d), dtype),
      lin_s=jnp.zeros((layers, batch, h, d, d), jnp.float32), lin_z=jnp.zeros((layers, batch, h, d), jnp.float32),
      text_k=text_k.astype(dtype), text_v=text_v.astype(dtype),
      slot_frame=jnp.full((n,), -1, jnp.int32),
      latents=jnp.zeros((batch, n) + tuple(latent_hw) + (wan.in_dim,), jnp.float32),
      lin_count=jnp.zeros((), jnp.int32), frame=jnp.zeros((), jnp.int32), key=key)


def cache_view(cfg: StreamConfig, wan: WanConfig, state: StreamState) -> tuple[LayerCache, CacheView]:
  """What the next chunk's forward reads: the per-layer cache (stacked over layers) and the view every
  layer shares (which slots, in which order, at which RoPE positions)."""
  frames, slots, n_valid = positions.cached_frames(cfg, state.frame)
  _, ph, pw = wan.patch_size
  key_cos, key_sin = rope_tables(wan, positions.frame_positions(cfg, state.frame, frames),
                                 state.latents.shape[2] // ph, state.latents.shape[3] // pw)
  return (LayerCache(state.k, state.v, state.lin_s, state.lin_z),
          CacheView(slots, n_valid, state.lin_count > 0, key_cos, key_sin))


def state_bytes(state: StreamState) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state)
             if not jnp.issubdtype(x.dtype, jax.dtypes.prng_key))


def absorb(lin_s, lin_z, count, k, v, n_tokens):
  """Fold `n_tokens` (0 or all of k's tokens) evicted tokens into the running means, in float32.

  k, v [L, B, T, H, D]. S <- (S N + sum phi(k) v^T) / (N + n), z likewise (Eq. 7's state)."""
  phi = jax.nn.relu(k.astype(jnp.float32))
  add_s = jnp.einsum("lbthd,lbthe->lbhde", phi, v.astype(jnp.float32), precision=_HI)
  add_z = phi.sum(axis=2)
  n = jnp.asarray(n_tokens, jnp.float32)
  total = count.astype(jnp.float32) + n
  scale_old = count.astype(jnp.float32) / jnp.maximum(total, 1.0)
  scale_new = jnp.where(n > 0, 1.0 / jnp.maximum(total, 1.0), 0.0)
  return lin_s * scale_old + add_s * scale_new, lin_z * scale_old + add_z * scale_new, count + n_tokens


def commit_chunk(cfg: StreamConfig, state: StreamState, new_k, new_v, clean) -> StreamState:
  """Write the current chunk (un-rotated K/V from the t = 0 forward, new_k/new_v [L, B, F*T, H, D],
  clean latents [B, F, h, w, C]) into the cache and advance the frame counter.

  Frame by frame: a sink frame goes to its sink slot; any other frame to its ring slot, whose previous
  occupant is leaving the softmax window and is first absorbed into the linear memory (once). With
  R = 0 a non-sink frame leaves the window as soon as its chunk is done and is absorbed directly."""
  f_chunk, s, r = cfg.chunk_frames, cfg.sink_frames, cfg.ring_frames
  layers, batch, length, heads, dim = new_k.shape
  tokens = length // f_chunk
  new_k = new_k.reshape(layers, batch, f_chunk, tokens, heads, dim).astype(state.k.dtype)
  new_v = new_v.reshape(layers, batch, f_chunk, tokens, heads, dim).astype(state.v.dtype)
  k, v, lin_s, lin_z, count = state.k, state.v, state.lin_s, state.lin_z, state.lin_count
  slot_frame, latents = state.slot_frame, state.latents
  for i in range(f_chunk):
    f = state.frame + i
    slot = slot_of(cfg, f)
    if r > 0 or s > 0:
      slot = jnp.minimum(slot, cfg.cache_slots - 1)   # R = 0: non-sink frames are not stored
    if cfg.linear:
      if r > 0:
        old = jax.lax.dynamic_index_in_dim(slot_frame, slot, keepdims=False)
        leaving = (f >= s) & (old >= 0)
        out_k = jax.lax.dynamic_index_in_dim(k, slot, axis=2, keepdims=False)
        out_v = jax.lax.dynamic_index_in_dim(v, slot, axis=2, keepdims=False)
      else:
        leaving = f >= s
        out_k, out_v = new_k[:, :, i], new_v[:, :, i]
      lin_s, lin_z, count = absorb(lin_s, lin_z, count, out_k, out_v, jnp.where(leaving, tokens, 0))
    if cfg.cache_slots:
      def put(buf, new, axis):
        if r == 0:   # only sink frames are stored; keep the slot otherwise
          new = jnp.where(f < s, new, jax.lax.dynamic_index_in_dim(buf, slot, axis=axis, keepdims=False))
        return jax.lax.dynamic_update_index_in_dim(buf, new, slot, axis=axis)
      k = put(k, new_k[:, :, i], 2)
      v = put(v, new_v[:, :, i], 2)
      latents = put(latents, clean[:, i].astype(latents.dtype), 1)
      slot_frame = put(slot_frame, f.astype(jnp.int32), 0)
  return state.replace(k=k, v=v, lin_s=lin_s, lin_z=lin_z, lin_count=count, slot_frame=slot_frame,
                       latents=latents, frame=state.frame + f_chunk)
