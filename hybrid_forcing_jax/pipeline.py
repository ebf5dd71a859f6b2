"""Prompt in, video frames out, chunk by chunk: text encoder -> streaming DiT -> streaming VAE decode.

`StreamingPipeline.frames` is a generator: it encodes each prompt once (prompt cache), runs one jitted
chunk step of the streaming engine, decodes the chunk with the VAE's streaming cache and yields its
frames (9 for the first chunk, 12 after; in pieces when the VAE decodes a chunk in pieces), so nothing
grows with the video's length.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hybrid_forcing_jax.checkpoint import load_checkpoint
from hybrid_forcing_jax.dit import WanDiT
from hybrid_forcing_jax.latent_codec import load_latent_codec
from hybrid_forcing_jax.streaming import sampler
from hybrid_forcing_jax.streaming.config import StreamConfig
from hybrid_forcing_jax.text_encoder import TEXT_LEN, PromptEmbeddingCache, TextEncoder
from hybrid_forcing_jax.tokenizer import load_tokenizer
from hybrid_forcing_jax.vae import WanVAE
from hybrid_forcing_jax.world import text as world_text
from hybrid_forcing_jax.world.tokenizer import WordTokenizer


@dataclasses.dataclass
class StreamingPipeline:
  dit: WanDiT
  dit_params: dict
  stream: StreamConfig
  vae: WanVAE        # or the world's PixelCodec: any latent codec of latent_codec.py
  vae_params: dict
  embed: Callable[[Sequence[str]], jnp.ndarray]  # prompts -> [B, text_len, text_dim]

  def video_frames_of_chunk(self, index: int) -> int:
    tf, f = self.vae.config.temporal_factor, self.stream.chunk_frames
    return 1 + tf * (f - 1) if index == 0 else tf * f

  def chunks_for(self, num_frames: int) -> int:
    """Chunks needed for at least `num_frames` video frames."""
    first, later = self.video_frames_of_chunk(0), self.video_frames_of_chunk(1)
    return 1 if num_frames <= first else 1 + -(-(num_frames - first) // later)

  def chunk_start_frame(self, index: int) -> int:
    return 0 if index == 0 else self.video_frames_of_chunk(0) + (index - 1) * self.video_frames_of_chunk(1)

  def frames(self, schedule: Sequence[tuple[int, str]], *, height: int, width: int, seed: int,
             recache: bool = True, num_chunks: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (chunk index, uint8 frames [T, H, W, 3]) for `num_chunks` chunks, or without end: once per
    chunk, or, when the VAE decodes a chunk in pieces (WanVAE's `decode_frames_per_call`), once per piece, in
    order. `schedule`: (chunk index, prompt) pairs sorted by chunk, the first at chunk 0; each later entry
    switches the prompt before its chunk.

    Per chunk the device queue gets denoise -> VAE decode -> cache write: the frames are decoded one
    DiT forward before the cache write ends, and the device works on that write while the host takes
    the frames and queues the next chunk. (Queuing the next chunk too before fetching made the first
    frame wait for that chunk's denoising: 0.48 s instead of 0.32 s to the first frame on an H100.)
    The first chunk's first piece is yielded before anything else is queued (or, on a cold start, compiled):
    decoded in pieces of one latent frame, the video's first frame waits for one frame's decode, not the
    chunk's nine."""
    sf = self.vae.config.spatial_factor
    latent_hw = (height // sf, width // sf)
    prompts = PromptEmbeddingCache(self.embed)
    switches = dict(schedule)
    state = sampler.start(self.dit, self.dit_params, self.stream, prompts.get(switches[0])[None],
                          jax.random.key(seed), latent_hw)
    denoise, write = sampler.jitted_phases(self.dit, self.stream)
    vae_cache = None
    chunks = itertools.count() if num_chunks is None else range(num_chunks)
    for index in chunks:
      if index > 0 and index in switches:
        text_kv = sampler.prompt_kv(self.dit, self.dit_params, prompts.get(switches[index])[None])
        state = sampler.switch_prompt(self.dit, self.dit_params, self.stream, state, text_kv, recache=recache)
      latents = denoise(self.dit_params, state)
      pieces = []
      for piece, (video, vae_cache) in enumerate(
          self.vae.decode_pieces(self.vae_params, latents.astype(self.vae.options.dtype), vae_cache)):
        ready = to_uint8(video)
        ready.copy_to_host_async()
        if index == 0 and piece == 0:
          # The video's first frames leave before anything else is queued: a copy can land behind work queued
          # after it (H100, first chunk: frames on the host after 0.265 s instead of 0.307 s), and on a cold
          # start they wait for no other program's compilation (the later pieces', the cache write's). Later
          # pieces and chunks keep the device busy instead: their copies overlap the rest of their chunk.
          yield index, np.asarray(ready)
          continue
        pieces.append(ready)
      if num_chunks is None or index + 1 < num_chunks:   # the last chunk's cache would never be read
        state = write(self.dit_params, state, latents)
      for ready in pieces:
        yield index, np.asarray(ready)


@jax.jit
def to_uint8(video):
  """The first video of a batch [B, T, H, W, 3] in [-1, 1] -> uint8 [T, H, W, 3], on the device (half
  the bytes of a bf16 video to copy to the host)."""
  return jnp.clip(jnp.rint((video[0].astype(jnp.float32) + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


# The world model that ships with the package (issue 12): the phase-2 EMA student with its text encoder,
# tokenizer and codec, in the layout scripts/world_pipeline.sh exports (RUNS/model). `sample` streams it
# when no checkpoint is given.
SHIPPED_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "world", "model")


def model_folders(root: str) -> dict[str, str]:
  """A model exported as scripts/world_pipeline.sh does (dit/, codec/, text/text_encoder/, text/tokenizer/)
  -> from_checkpoints' folder arguments."""
  return dict(dit=os.path.join(root, "dit"), vae=os.path.join(root, "codec"),
              text_encoder=os.path.join(root, "text", "text_encoder"),
              tokenizer=os.path.join(root, "text", "tokenizer"))


def from_checkpoints(stream: StreamConfig, *, dit: str, vae: str, text_encoder: str, tokenizer: str,
                     attention_backend: str = "auto", text_weights_on_host: bool | None = None,
                     vae_frames_per_call: int | None = None) -> StreamingPipeline:
  """Converted checkpoint folders (python -m convert) and a local umT5 tokenizer folder; or the world's
  model: its DiT, its pixel-codec folder as `vae` (latent_codec.py) and its text folders (world/text.py).
  Activations in bfloat16 on every device: it is what the models are trained in, and XLA's CPU runs the
  world student (9.1M parameters, 64x64, hybrid stream) as fast in it as in float32 (2-core CPU: 1.68 s a
  chunk either way, also with XLA held to AVX2, i.e. without the CPU's bf16 instructions).
  text_weights_on_host: the text encoder's weights in host memory between prompts (text_encoder.py's
  HostResidentEncoder); None: text_encoder.weights_on_host_by_default (a big encoder on a GPU or TPU).
  vae_frames_per_call: latent frames per VAE decode call (latent_codec.load_latent_codec; None: a chunk)."""
  dit_config, dit_params = load_checkpoint(dit, "wan_dit")
  codec, codec_params = load_latent_codec(vae, decode_frames_per_call=vae_frames_per_call)
  words = load_tokenizer(tokenizer)
  # Prompts are padded to the length the DiT was trained with (padding rows reach its cross-attention):
  # Wan's 512, the world's 32.
  text_len = world_text.TEXT_LEN if isinstance(words, WordTokenizer) else TEXT_LEN
  encoder = TextEncoder.from_checkpoint(text_encoder, words, text_len=text_len, weights_on_host=text_weights_on_host)
  if encoder.config.dim != dit_config.text_dim:
    raise ValueError(f"text encoder {text_encoder!r} has dim {encoder.config.dim}, the DiT expects "
                     f"text_dim {dit_config.text_dim}")
  if codec.config.z_dim != dit_config.in_dim or codec.config.z_dim != dit_config.out_dim:
    raise ValueError(f"latent codec {vae!r} has z_dim {codec.config.z_dim}, the DiT expects {dit_config.in_dim} "
                     f"channels in and gives {dit_config.out_dim}")
  model = WanDiT(dit_config, attention_backend=attention_backend)
  return StreamingPipeline(model, dit_params, stream, codec, codec_params, encoder.encode)
