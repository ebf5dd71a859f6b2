"""The latent codec of a run, chosen by its folder: the Wan VAE (`python -m convert --model=vae`) or the
world's lossless pixel codec (`save_pixel_codec`). Both have the same encode / streaming-decode
interface (`encode(params, video)`, `decode_chunk(params, z, cache)`, `decode_pieces(params, z, cache)`, `config.z_dim`,
`config.spatial_factor`, `config.temporal_factor`, `options.dtype`), so the pipeline, `sample`, the
evaluation and the trainer take either one from the same kind of folder:

    codec, params = load_latent_codec("ckpt/vae")          # WanVAE, its parameters
    codec, params = load_latent_codec("data/world/codec")  # PixelCodec, {} (world.prepare writes it)
"""
from __future__ import annotations

from hybrid_forcing_jax.checkpoint import load_checkpoint, read_meta, save_checkpoint
from hybrid_forcing_jax.vae import WanVAE
from hybrid_forcing_jax.world.codec import PixelCodec, PixelCodecConfig

# Checkpoint kind -> the codec class built from its config.
CODECS = {"wan_vae": WanVAE, "pixel_codec": PixelCodec}


def load_latent_codec(folder: str, *, decode_frames_per_call: int | None = None, tail_by_frame: bool | None = None):
  """A codec folder -> (codec, params). Any other checkpoint kind is refused, naming it.

  decode_frames_per_call, tail_by_frame: the Wan VAE's (WanVAE): latent frames decoded per call, to bound its
  temporaries (None: a chunk in one call), and its full-resolution layers one video frame at a time (None: with
  decode_frames_per_call). The pixel codec only rearranges pixels: it has no temporaries to bound, and decodes
  the same frames either way."""
  kind = read_meta(folder)["model"]
  if kind not in CODECS:
    raise ValueError(f"{folder}: holds a {kind!r} checkpoint, not a latent codec (one of {sorted(CODECS)})")
  config, params = load_checkpoint(folder, kind)
  if kind == "wan_vae":
    return WanVAE(config, decode_frames_per_call=decode_frames_per_call, tail_by_frame=tail_by_frame), params
  return CODECS[kind](config), params


def save_pixel_codec(folder: str, config: PixelCodecConfig = PixelCodecConfig()) -> None:
  """Write a pixel-codec folder: config.json and an empty weights file (the codec has no parameters)."""
  save_checkpoint(folder, "pixel_codec", config, {})
