"""The pixel codec is lossless: decode(encode(x)) == x for uint8 and float pixels, whole and chunk by
chunk as the streaming pipeline decodes, and it keeps the Wan VAE's frame arithmetic."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from hybrid_forcing_jax.pipeline import to_uint8
from hybrid_forcing_jax.world.codec import PixelCodec, PixelCodecConfig

CODEC = PixelCodec()


def _uint8_video(frames=21, h=8, w=12, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (1, frames, h, w, 3), dtype=np.uint8)


def test_latent_shape_follows_wans_grouping():
  z = CODEC.encode(None, _uint8_video(21))
  assert z.shape == (1, 6, 4, 6, 48) and z.dtype == np.float32
  assert PixelCodecConfig(spatial_factor=4, temporal_factor=1).z_dim == 48


@pytest.mark.parametrize("latent_dtype", [jnp.float32, jnp.bfloat16])
def test_uint8_round_trip_through_the_pipelines_rounding(latent_dtype):
  video = _uint8_video()
  z = jnp.asarray(CODEC.encode(None, video)).astype(latent_dtype)
  np.testing.assert_array_equal(np.asarray(to_uint8(CODEC.decode(None, z))), video[0])


def test_float_round_trip_is_bit_exact_numpy_and_jax():
  video = np.random.default_rng(1).uniform(-1, 1, (2, 9, 4, 6, 3)).astype(np.float32)
  out = CODEC.decode(None, CODEC.encode(None, video))
  assert isinstance(out, np.ndarray)
  np.testing.assert_array_equal(out, video)
  out = CODEC.decode(None, CODEC.encode(None, jnp.asarray(video)))
  np.testing.assert_array_equal(np.asarray(out), video)


def test_streaming_decode_chunk_by_chunk():
  video = _uint8_video(1 + 4 * 8)
  z = jnp.asarray(CODEC.encode(None, video))
  frames, cache = CODEC.decode_chunk(None, z[:, :3])
  assert frames.shape[1] == 9
  chunks = [frames]
  for start in range(3, 9, 3):
    frames, cache = CODEC.decode_chunk(None, z[:, start:start + 3], cache)
    assert frames.shape[1] == 12
    chunks.append(frames)
  np.testing.assert_array_equal(np.asarray(to_uint8(jnp.concatenate(chunks, axis=1))), video[0])
  np.testing.assert_array_equal(np.asarray(CODEC.decode_streaming(None, z, 2)), np.asarray(CODEC.decode(None, z)))


def test_streaming_encode_equals_whole():
  video = _uint8_video(1 + 4 * 5)
  first, cache = CODEC.encode_chunk(None, video[:, :9])
  later, _ = CODEC.encode_chunk(None, video[:, 9:], cache)
  np.testing.assert_array_equal(np.concatenate([first, later], 1), CODEC.encode(None, video))


@pytest.mark.parametrize("shape, words", [((1, 20, 8, 8, 3), "1 + 4k frames"), ((1, 5, 7, 8, 3), "multiples of 2"),
                                          ((5, 8, 8, 3), "[B, T, H, W, 3]")])
def test_bad_video_is_named(shape, words):
  with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("+", r"\+")):
    CODEC.encode(None, np.zeros(shape, np.uint8))


def test_bad_latents_are_named():
  with pytest.raises(ValueError, match="48"):
    CODEC.decode(None, np.zeros((1, 3, 4, 4, 16), np.float32))
