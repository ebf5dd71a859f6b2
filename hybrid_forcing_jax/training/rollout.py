"""The generator's self-forcing rollout (training_spec.md 2-3; Self-Forcing
`pipeline/self_forcing_training.py`, Hybrid Forcing `pipeline/hybrid_forcing_training.py`), run on the
streaming sampler's own chunk step (streaming/sampler.py), so training and inference share one model and
one stream.

A rollout of n chunks, one exit step e shared by all of them (`draw_rollout_plan`):
  * every chunk runs the sampler's steps 0..e-1 outside the gradient (each x0 re-noised with fresh noise,
    not the peers' defect D1) and returns the x0 of step e;
  * only the chunks of the loss window (the last `loss_frames` frames) run step e with gradient; earlier
    chunks run it on frozen parameters;
  * after each chunk its x0 is written to the cache at the context-noise level, outside the gradient
    (sampler.write_chunk), so no gradient crosses chunks.
The losses see the window only. Long rollouts (n chunks past the window, phase 2) follow Self-Forcing's
`_run_generator`: the frames before the window and the window's first frame are decoded with the VAE,
the last pixel frame is encoded again as a 1-frame (image) latent and replaces the window's first frame,
and the window's first chunk is masked out of the losses; at exactly the window's length nothing is
replaced or masked. All of it outside the gradient.

Rollout length. n is drawn per step in [min_chunks, max_chunks] from the step's key, which every device
holds (the step is one SPMD program with a replicated key), so all devices roll out the same length.
Neither one compile per length (12 programs for phase 2's 7..18 chunks) nor a masked max-length scan
(every step paying for 18 chunks, about 45% more chunk work than the mean of 12.5): the chunks before
the window carry no gradient, so they run in a `lax.fori_loop` with a traced trip count (a while loop,
which needs no reverse mode and costs exactly n - window chunks), and the window is a fixed-length
`lax.scan` of differentiated chunks. One program serves every length. JAX cannot reverse-differentiate
a while loop: that the step's `value_and_grad` compiles at all proves no gradient path runs through the
chunks before the window.

Noise. Each example draws all its noise from its own key, per chunk counted from the END of the rollout
(chunk c of n uses index n - 1 - c). So the window's noise does not depend on n (`window_noise`): the
regulariser's teacher target, made from the window's noise (online, or precomputed by
make_teacher_rollouts from the same key), matches every rollout length, and the target of an example
does not depend on which batch it lands in.

Phase 2 and the peers' extra forward: Hybrid Forcing runs one more no-grad forward per chunk at t = 1000
(`is_first_step`) only to fold the frames leaving the window into its linear state. Here the stream state
absorbs the frames a chunk pushes out of the window during that chunk's cache write
(state.commit_chunk), so the next chunk already reads an up-to-date linear memory: the extra forward is
not needed, and each chunk costs e + 1 forwards plus the write. The block-sparse softmax of the hybrid
setting runs through the kernels' custom_vjp in the window's exit forwards (stream config
`sparse_backend`; "xla", the dense-mask reference, on the CPU).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from hybrid_forcing_jax.dit import WanDiT
from hybrid_forcing_jax.streaming.config import StreamConfig
from hybrid_forcing_jax.streaming.sampler import chunk_step
from hybrid_forcing_jax.streaming.state import init_state


@struct.dataclass
class Rollout:
  """The loss window of a rollout.

  video [B, loss_frames, h, w, C] float32: the window's exit-step x0 (with gradient where asked), its
    first frame replaced by the re-encoded one in a long rollout;
  frame_mask [loss_frames] float32: 1 where the losses count a frame (0 on a long rollout's first chunk);
  noise [B, loss_frames, h, w, C] float32: the window's starting noise (`window_noise`);
  exit_step, num_chunks: int32 scalars.
  """
  video: jnp.ndarray
  frame_mask: jnp.ndarray
  noise: jnp.ndarray
  exit_step: jnp.ndarray
  num_chunks: jnp.ndarray


def draw_rollout_plan(key, *, min_chunks: int, max_chunks: int, num_steps: int):
  """-> (num_chunks int32 in [min_chunks, max_chunks], exit_step int32 in [0, num_steps)), uniform and
  independent (Self-Forcing's rank-0 draw, broadcast). Pass a key every device holds: the draw is then
  identical everywhere."""
  if not 1 <= min_chunks <= max_chunks:
    raise ValueError(f"rollout: need 1 <= min_chunks <= max_chunks, got {min_chunks}, {max_chunks}")
  if num_steps < 1:
    raise ValueError(f"rollout: num_steps must be >= 1, got {num_steps}")
  key_n, key_e = jax.random.split(key)
  return (jax.random.randint(key_n, (), min_chunks, max_chunks + 1, jnp.int32),
          jax.random.randint(key_e, (), 0, num_steps, jnp.int32))


def _chunk_noise(noise_keys, index_from_end, num_steps: int, shape):
  """The noise of the chunk `index_from_end` chunks before the rollout's last, per example: [num_steps,
  B, *shape] float32, laid out as sampler.chunk_noise (entry 0 starts the chunk, entry i re-noises after
  step i - 1)."""
  draw = lambda k: jax.random.normal(jax.random.fold_in(k, index_from_end), (num_steps,) + tuple(shape), jnp.float32)
  return jnp.moveaxis(jax.vmap(draw)(noise_keys), 0, 1)


def _window_chunk_noise(noise_keys, cfg: StreamConfig, window_chunks: int, latent_hw, channels: int):
  """[window_chunks, num_steps, B, F, h, w, C]: the window's chunks in rollout order."""
  shape = (cfg.chunk_frames, *latent_hw, channels)
  from_end = jnp.arange(window_chunks - 1, -1, -1)
  return jax.vmap(lambda d: _chunk_noise(noise_keys, d, len(cfg.denoising_steps), shape))(from_end)


def window_noise(noise_keys, cfg: StreamConfig, *, loss_frames: int, latent_hw, channels: int):
  """The starting noise of a rollout's last `loss_frames` frames, [B, loss_frames, h, w, C] float32, for
  examples with keys noise_keys [B]; the same for every rollout length (what the teacher starts from)."""
  noise = _window_chunk_noise(noise_keys, cfg, _window_chunks(cfg, loss_frames), latent_hw, channels)[:, 0]
  return _frames_of_chunks(noise)


def _window_chunks(cfg: StreamConfig, loss_frames: int) -> int:
  if loss_frames < 1 or loss_frames % cfg.chunk_frames:
    raise ValueError(f"rollout: loss_frames {loss_frames} must be a positive multiple of stream.chunk_frames "
                     f"{cfg.chunk_frames}")
  return loss_frames // cfg.chunk_frames


def _frames_of_chunks(chunks):
  """[N, B, F, ...] -> [B, N F, ...]."""
  n, b, f = chunks.shape[:3]
  return jnp.moveaxis(chunks, 0, 1).reshape((b, n * f) + chunks.shape[3:])


def self_forcing_rollout(model: WanDiT, params, stream_cfg: StreamConfig, text_kv, noise_keys, *, num_chunks,
                         exit_step, latent_hw, loss_frames: int = 21, context_noise: float = 0.0,
                         context_key=None, grad: bool = True, grad_params=None, vae=None) -> Rollout:
  """Roll the generator out for `num_chunks` chunks (int, traced or not, >= the window's chunks) at
  `exit_step` (traced int) and return the loss window (see the module docstring).

  text_kv: the prompts' cross-attention K/V (WanDiT.text_kv; a constant in the stream). noise_keys [B]:
  one PRNG key per example. context_key: the key of the cache-write noise, needed when context_noise > 0.
  grad: False runs everything on frozen parameters (the critic's rollout). grad_params: the parameters of
  the window's exit forwards when they should differ from `params` (a test's way to show that nothing
  else is differentiated); default `params`. vae: None, or (a latent codec: WanVAE or PixelCodec, its
  params) for the long-rollout rule.
  """
  window = _window_chunks(stream_cfg, loss_frames)
  if isinstance(num_chunks, int) and num_chunks < window:
    raise ValueError(f"rollout: num_chunks {num_chunks} is shorter than the loss window ({window} chunks)")
  if context_noise and context_key is None:
    raise ValueError("rollout: context_noise > 0 draws noise for the cache writes; pass context_key")
  frozen = jax.lax.stop_gradient(params)
  live = (params if grad_params is None else grad_params) if grad else frozen
  channels = model.config.in_dim
  num_steps = len(stream_cfg.denoising_steps)
  chunk_shape = (stream_cfg.chunk_frames, *latent_hw, channels)
  state = init_state(stream_cfg, model.config, text_kv,
                     jax.random.key(0) if context_key is None else context_key, tuple(latent_hw), model.dtype)
  step = lambda state, p, noise: chunk_step(model, frozen, stream_cfg, state, exit_step=exit_step, grad_params=p,
                                            context_noise=context_noise, noise=noise)
  num_chunks = jnp.asarray(num_chunks, jnp.int32)
  before = num_chunks - window   # chunks before the window
  decoder = None if vae is None else _Decoder(*vae, batch_latents_shape=(noise_keys.shape[0],) + chunk_shape)

  def prefix_chunk(c, carry):
    state, decoded = carry
    state, chunk = step(state, frozen, _chunk_noise(noise_keys, num_chunks - 1 - c, num_steps, chunk_shape))
    if decoder is not None:
      decoded = decoder.push(decoded, chunk, first=c == 0)
    return state, decoded

  carry = (state, None if decoder is None else decoder.empty())
  state, decoded = jax.lax.fori_loop(0, before, prefix_chunk, carry)
  noises = _window_chunk_noise(noise_keys, stream_cfg, window, latent_hw, channels)
  _, chunks = jax.lax.scan(lambda s, noise: step(s, live, noise), state, noises)
  video = _frames_of_chunks(chunks)
  mask = jnp.ones((loss_frames,), jnp.float32)
  if decoder is not None:
    long = before > 0
    first = jax.lax.cond(long, lambda: decoder.reencode_first(decoded, video[:, :1]),
                         lambda: jax.lax.stop_gradient(video[:, :1]))
    video = jnp.concatenate([jnp.where(long, first, video[:, :1]), video[:, 1:]], axis=1)
    mask = jnp.where(long & (jnp.arange(loss_frames) < stream_cfg.chunk_frames), 0.0, mask)
  return Rollout(video=video, frame_mask=mask, noise=_frames_of_chunks(noises[:, 0]),
                 exit_step=jnp.asarray(exit_step, jnp.int32), num_chunks=num_chunks)


class _Decoder:
  """The VAE side of the long-rollout rule: the chunks before the window streamed through the decoder as
  they are generated (its causal cache carried, so memory does not grow with the rollout), then the
  window's first frame decoded after them, its last pixel frame encoded as a video's first frame.
  Everything under stop_gradient, on frozen VAE parameters."""

  def __init__(self, model, params, *, batch_latents_shape):
    self.model = model   # a latent codec: WanVAE, or the world's PixelCodec (latent_codec.py)
    self.params = jax.lax.stop_gradient(params)
    self.shape = batch_latents_shape

  def _decode(self, z, cache):
    return self.model.decode_chunk(self.params, jax.lax.stop_gradient(z), cache)

  def empty(self):
    """The decoder cache before any chunk (zeros; the first chunk starts the video and ignores it)."""
    _, cache = jax.eval_shape(lambda: self._decode(jnp.zeros(self.shape, jnp.float32), None))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache)

  def push(self, cache, chunk, *, first):
    return jax.lax.cond(first, lambda: self._decode(chunk, None)[1], lambda: self._decode(chunk, cache)[1])

  def reencode_first(self, cache, frame):
    pixels, _ = self._decode(frame, cache)
    latent, _ = self.model.encode_chunk(self.params, pixels[:, -1:])
    return jax.lax.stop_gradient(latent.astype(jnp.float32))
