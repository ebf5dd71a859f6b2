"""A lossless latent space for the world: pixels rearranged (space-to-depth in space and time), with
the Wan VAE's encode / streaming-decode interface, so the pipeline and the trainer take either one.

Latent frame 0 holds video frame 0 and each later latent frame holds the next `temporal_factor` frames,
as Wan's causal VAE maps 1 + 4k frames to 1 + k latent frames: chunks of 3 latent frames decode to 9
video frames, then 12, and the training length of 21 latent frames is 81 frames (5 s at 16 fps), so
every frame count of the streaming code and the configs carries over unchanged. Frame 0 is repeated
into all slots of latent frame 0, so every latent frame looks alike to the DiT; decoding keeps its last
slot, the one next to frame 1.

Each latent pixel is a `spatial_factor` x `spatial_factor` block of RGB pixels over `temporal_factor`
frames: z_dim = 3 * 4 * 2 * 2 = 48 channels by default, channel index ((t * s + dy) * s + dx) * 3 + rgb.
Why 2x2 blocks and 4 frames: what a DiT token sees is 3 * temporal_factor * (spatial_factor * patch)^2
values; with Wan's 2x2 patch that is 192, which a tiny DiT of width >= 192 can carry through its
residual stream (a narrower stream could not even pass the noise on to its output), and 64x64 video is
then 16x16 tokens a latent frame. Larger blocks would cut tokens further but ask for a wider model.

Latents are the pixels in [-1, 1] (uint8 p -> p / 127.5 - 1), unscaled. decode(encode(x)) == x exactly:
float pixels are only moved; uint8 pixels come back exactly through the pipeline's rounding
((z + 1) * 127.5, rounded), also from bfloat16 latents (their error stays below half a level).
There are no parameters: `params` is accepted (and ignored) to keep the VAE's signatures.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from hybrid_forcing_jax.config_io import JsonConfig
from hybrid_forcing_jax.video_shapes import check_latents, check_video, decode_streaming


@dataclasses.dataclass(frozen=True)
class PixelCodecConfig(JsonConfig):
  spatial_factor: int = 2
  temporal_factor: int = 4

  def __post_init__(self):
    if self.spatial_factor < 1 or self.temporal_factor < 1:
      raise ValueError(f"PixelCodecConfig: spatial_factor and temporal_factor must be >= 1, got "
                       f"{self.spatial_factor}, {self.temporal_factor}")

  @property
  def z_dim(self) -> int:
    return 3 * self.temporal_factor * self.spatial_factor ** 2


@dataclasses.dataclass(frozen=True)
class CodecOptions:
  dtype: type = jnp.float32   # what the pipeline casts latents to before decoding (as WanVAE.options.dtype)


class PixelCodec:
  """Encode / decode like `WanVAE`, for NumPy arrays (the data pipeline) and JAX arrays alike.

    codec = PixelCodec()
    z = codec.encode(None, video)                  # [B, 1+4k, H, W, 3] uint8 or [-1, 1] -> [B, 1+k, H/2, W/2, 48]
    frames, cache = codec.decode_chunk(None, z[:, :3])          # 9 frames in [-1, 1]
    frames, cache = codec.decode_chunk(None, z[:, 3:6], cache)  # 12 frames, and so on
  """

  def __init__(self, config: PixelCodecConfig = PixelCodecConfig(), *, dtype=jnp.float32):
    self.config = config
    self.options = CodecOptions(dtype)

  # -- decoding
  def decode_chunk(self, params, z, cache=None):
    """(frames in [-1, 1], cache); cache=None starts a video (its first latent frame gives 1 frame).
    The cache only marks a started video: the codec keeps nothing between chunks."""
    del params
    self._check_latents(z)
    frames = _depth_to_space(z, self.config)
    if cache is None:
      frames = frames[:, self.config.temporal_factor - 1:]
    return frames, {}

  def decode_pieces(self, params, z, cache=None):
    """WanVAE.decode_pieces' interface: one piece, the chunk (the codec only moves pixels: no temporaries
    to bound by decoding less at a time)."""
    yield self.decode_chunk(params, z, cache)

  def decode(self, params, z):
    """A whole latent video [B, 1 + k, h, w, z_dim] -> [B, 1 + 4k, 2h, 2w, 3] in [-1, 1]."""
    return self.decode_chunk(params, z)[0]

  def decode_streaming(self, params, z, chunk: int = 3):
    """Decode chunk by chunk, as the streaming pipeline does; equals `decode`."""
    return decode_streaming(self, params, z, chunk, _xp(z).concatenate)

  # -- encoding
  def encode_chunk(self, params, video, cache=None):
    """(float32 latents, cache): a first chunk has 1 + 4k frames, later ones 4k."""
    del params
    self._check_video(video, first=cache is None)
    xp = _xp(video)
    x = video.astype(xp.float32) / 127.5 - 1.0 if video.dtype == xp.uint8 else video.astype(xp.float32)
    if cache is None:
      x = xp.concatenate([xp.repeat(x[:, :1], self.config.temporal_factor, axis=1), x[:, 1:]], axis=1)
    return _space_to_depth(x, self.config), {}

  def encode(self, params, video):
    """[B, 1 + 4k, H, W, 3] (uint8, or float in [-1, 1]) -> float32 latents [B, 1 + k, H/2, W/2, z_dim]."""
    return self.encode_chunk(params, video)[0]

  # -- input checks
  def _check_latents(self, z):
    check_latents(z, self.config.z_dim, "codec")

  def _check_video(self, video, first: bool):
    check_video(video, self.config.temporal_factor, self.config.spatial_factor, first, "codec")


def _xp(x):
  return np if isinstance(x, np.ndarray) else jnp


def _space_to_depth(x, c: PixelCodecConfig):
  """[B, G * tf, H, W, 3] -> [B, G, H / s, W / s, tf * s * s * 3]."""
  b, t, h, w, ch = x.shape
  tf, s = c.temporal_factor, c.spatial_factor
  x = x.reshape(b, t // tf, tf, h // s, s, w // s, s, ch).transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b, t // tf, h // s, w // s, c.z_dim)


def _depth_to_space(z, c: PixelCodecConfig):
  """[B, G, h, w, tf * s * s * 3] -> [B, G * tf, h * s, w * s, 3] (the inverse of _space_to_depth)."""
  b, g, h, w, _ = z.shape
  tf, s = c.temporal_factor, c.spatial_factor
  x = z.reshape(b, g, h, w, tf, s, s, 3).transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return x.reshape(b, g * tf, h * s, w * s, 3)

