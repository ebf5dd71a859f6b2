"""What the latent codecs (the Wan VAE and the world's lossless pixel codec) share: their input checks
and the chunk-by-chunk decode. Both map 1 + T k video frames to 1 + k latent frames and S x S pixels to
one latent position, and decode with an explicit cache: decode_chunk(params, z, cache) -> (video, cache)."""
from __future__ import annotations


def check_latents(z, z_dim: int, codec: str) -> None:
  """z: channels-last latents [B, T, h, w, z_dim] with at least one frame."""
  if getattr(z, "ndim", None) != 5:
    raise ValueError(f"latents must be channels-last [B, T, h, w, {z_dim}], got shape {getattr(z, 'shape', z)}")
  if z.shape[-1] != z_dim:
    raise ValueError(f"latents have {z.shape[-1]} channels, the {codec} expects {z_dim} "
                     f"(channels-last [B, T, h, w, C]; got shape {tuple(z.shape)})")
  if z.shape[1] < 1:
    raise ValueError("latents have no frames")


def check_video(video, temporal_factor: int, spatial_factor: int, first: bool, codec: str) -> None:
  """video: channels-last RGB [B, T, H, W, 3]; the first chunk of a video has 1 + temporal_factor k
  frames, a later chunk a positive multiple of temporal_factor; H and W multiples of spatial_factor."""
  if getattr(video, "ndim", None) != 5 or video.shape[-1] != 3:
    raise ValueError(f"video must be channels-last RGB [B, T, H, W, 3], got shape {getattr(video, 'shape', video)}")
  t, h, w = video.shape[1:4]
  tf, sf = temporal_factor, spatial_factor
  if first and (t - 1) % tf:
    raise ValueError(f"video has {t} frames; the {codec} encodes 1 + {tf}k frames (1, {1 + tf}, {1 + 2 * tf}, ...)")
  if not first and (t == 0 or t % tf):
    raise ValueError(f"a later chunk must have a positive multiple of {tf} frames, got {t}")
  if h % sf or w % sf:
    raise ValueError(f"video height and width must be multiples of {sf}, got {h}x{w}")


def decode_streaming(codec, params, z, chunk: int, concatenate):
  """Decode latents [B, T, h, w, C] `chunk` latent frames at a time through codec.decode_chunk, as the
  streaming pipeline does; equals the codec's whole-video decode. concatenate: np or jnp's."""
  codec._check_latents(z)
  outs, cache = [], None
  for start in range(0, z.shape[1], chunk):
    out, cache = codec.decode_chunk(params, z[:, start:start + chunk], cache)
    outs.append(out)
  return concatenate(outs, axis=1)
