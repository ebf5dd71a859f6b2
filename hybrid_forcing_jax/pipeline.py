"""Prompt in, video frames out, chunk by chunk: text encoder -> streaming DiT -> streaming VAE decode.

`StreamingPipeline.frames` is a generator: it encodes each prompt once (prompt cache), runs one jitted
chunk step of the streaming engine, decodes the chunk with the VAE's streaming cache and yields its
frames (9 for the first chunk, 12 after; in pieces when the VAE decodes a chunk in pieces), so nothing
grows with the video's length.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import os
import threading
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hybrid_forcing_jax.checkpoint import load_checkpoint, read_config
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
  # precompile_first_chunk's programs still compiling, by name ("start", "denoise"): the stream waits for each
  # before its first call (compiling it again meanwhile would only double the work).
  precompiled: dict[str, concurrent.futures.Future] = dataclasses.field(default_factory=dict)

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
    context = prompts.get(switches[0])[None]
    self._compiled("start")
    state = sampler.start(self.dit, self.dit_params, self.stream, context, jax.random.key(seed), latent_hw)
    denoise, write = sampler.jitted_phases(self.dit, self.stream)
    vae_cache = None
    chunks = itertools.count() if num_chunks is None else range(num_chunks)
    for index in chunks:
      if index > 0 and index in switches:
        text_kv = sampler.prompt_kv(self.dit, self.dit_params, prompts.get(switches[index])[None])
        state = sampler.switch_prompt(self.dit, self.dit_params, self.stream, state, text_kv, recache=recache)
      self._compiled("denoise")
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

  def _compiled(self, name: str) -> None:
    """Wait for the precompiled program `name`, if one is compiling (and raise what its compilation raised)."""
    future = self.precompiled.pop(name, None)
    if future is not None:
      future.result()


def precompile_first_chunk(model: WanDiT, params, stream: StreamConfig, context: jax.ShapeDtypeStruct,
                           latent_hw: tuple[int, int]) -> dict[str, concurrent.futures.Future]:
  """Compile what the stream runs before its first frame, `start` (prompt K/V and the empty state) and then
  `denoise`, from shapes alone on a background thread, started before the text encoder's and the VAE's weights
  are read: they compile meanwhile and beside the text encoder's own compilation, instead of after the prompt is
  encoded (`sample --precompile`). One thread: the cache write is not needed before the first frame. jax keeps a
  compiled program by what it computes, so the stream's own calls find these ready (they trace again, which is
  cheap); the shapes carry no placements, as the stream's arguments have none, so the lowered programs are the
  same ones (tests/test_sample.py checks that each compiles once). Whether it pays depends on idle cores: on the
  2-core CPU the shipped model v0's first frame came later (3.8 -> 5.3-5.6 s: the compilations share the two cores);
  on an H200 host at full size it comes 8-12 s sooner from an empty cache (docs/benchmarks.md), hence
  precompile_by_default.
  context: the prompt embeddings' shape, [1, text_len, text_dim]."""
  shape = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)   # noqa: E731
  params = jax.tree.map(shape, params)
  key = jax.eval_shape(lambda: jax.random.key(0))
  state = jax.eval_shape(lambda p, c, k: sampler.start(model, p, stream, c, k, latent_hw), params, context, key)
  denoise, _ = sampler.jitted_phases(model, stream)
  futures = {"start": concurrent.futures.Future(), "denoise": concurrent.futures.Future()}
  jobs = {"start": lambda: sampler.lowered_start(model, params, stream, context, key, latent_hw).compile(),
          "denoise": lambda: denoise.lower(params, state).compile()}

  def run():
    for name, job in jobs.items():
      try:
        futures[name].set_result(job())
      except BaseException as e:   # noqa: BLE001 (handed to whoever waits for the result)
        futures[name].set_exception(e)

  # A daemon thread: a process interrupted before its first frame does not wait for the compilation.
  threading.Thread(target=run, name="precompile first chunk", daemon=True).start()
  return futures


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


def precompile_by_default() -> bool:
  """Whether `sample` precompiles when not told (--precompile / --noprecompile): on a GPU or TPU, where the
  host has cores to spare while the device holds the work (H200, full size: 53.6-55.8 -> 42.1-48.0 s to the first
  frame from an empty cache), not on a CPU, where the compilation competes with the loading for the same cores
  (2-core CPU, the shipped model v0: 3.8 -> 5.3-5.6 s)."""
  return jax.default_backend() != "cpu"


def from_checkpoints(stream: StreamConfig, *, dit: str, vae: str, text_encoder: str, tokenizer: str,
                     attention_backend: str = "auto", text_weights_on_host: bool | None = None,
                     vae_frames_per_call: int | None = None,
                     precompile_size: tuple[int, int] | None = None) -> StreamingPipeline:
  """Converted checkpoint folders (python -m convert) and a local umT5 tokenizer folder; or the world's
  model: its DiT, its pixel-codec folder as `vae` (latent_codec.py) and its text folders (world/text.py).
  Activations in bfloat16 on every device: it is what the models are trained in, and XLA's CPU runs the
  world student (9.1M parameters, 64x64, hybrid stream) as fast in it as in float32 (2-core CPU: 1.68 s a
  chunk either way, also with XLA held to AVX2, i.e. without the CPU's bf16 instructions).
  text_weights_on_host: the text encoder's weights in host memory between prompts (text_encoder.py's
  HostResidentEncoder); None: text_encoder.weights_on_host_by_default (a big encoder on a GPU or TPU).
  vae_frames_per_call: latent frames per VAE decode call (latent_codec.load_latent_codec; None: a chunk).
  precompile_size: (height, width) of the video to come: its first chunk's programs compile on a background
  thread while the rest loads (precompile_first_chunk); None: each compiles at its first call."""
  dit_config, dit_params = load_checkpoint(dit, "wan_dit")
  codec, codec_params = load_latent_codec(vae, decode_frames_per_call=vae_frames_per_call)
  words = load_tokenizer(tokenizer)
  # Prompts are padded to the length the DiT was trained with (padding rows reach its cross-attention):
  # Wan's 512, the world's 32.
  text_len = world_text.TEXT_LEN if isinstance(words, WordTokenizer) else TEXT_LEN
  text_dim = read_config(text_encoder, "umt5").dim
  if text_dim != dit_config.text_dim:
    raise ValueError(f"text encoder {text_encoder!r} has dim {text_dim}, the DiT expects text_dim {dit_config.text_dim}")
  if codec.config.z_dim != dit_config.in_dim or codec.config.z_dim != dit_config.out_dim:
    raise ValueError(f"latent codec {vae!r} has z_dim {codec.config.z_dim}, the DiT expects {dit_config.in_dim} "
                     f"channels in and gives {dit_config.out_dim}")
  model = WanDiT(dit_config, attention_backend=attention_backend)
  text_dtype = jnp.bfloat16   # the encoder's, so its embeddings'
  precompiled = {}
  if precompile_size is not None:   # before the text encoder's weights are read (umT5-XXL: 11 GB)
    sf = codec.config.spatial_factor
    precompiled = precompile_first_chunk(model, dit_params, stream,
                                         jax.ShapeDtypeStruct((1, text_len, text_dim), text_dtype),
                                         (precompile_size[0] // sf, precompile_size[1] // sf))
  encoder = TextEncoder.from_checkpoint(text_encoder, words, dtype=text_dtype, text_len=text_len,
                                        weights_on_host=text_weights_on_host)
  return StreamingPipeline(model, dit_params, stream, codec, codec_params, encoder.encode, precompiled)
