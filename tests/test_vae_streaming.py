"""Streaming decode/encode with an explicit cache equals whole-video decode/encode; bad input errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
torch = pytest.importorskip("torch")  # the test extra; without it this module is skipped
from safetensors.torch import save_file

from convert.wan_vae import convert_vae
from hybrid_forcing_jax.checkpoint import load_checkpoint
from hybrid_forcing_jax.vae import WanVAE, init_params
from tests import vae_fixtures as fx


@pytest.fixture(scope="module")
def setup():
  vae = WanVAE(fx.CONFIG, dtype=jnp.float32, conv_impl="3d")  # the fastest layout on the CPU
  return vae, init_params(fx.CONFIG, seed=4, param_dtype=jnp.float32)


def test_streaming_decode_equals_whole(setup):
  vae, params = setup
  z = jnp.asarray(fx.latents(seed=5, batch=1, frames=9))
  whole = np.asarray(vae.decode(params, z))
  assert whole.shape == (1, 1 + 4 * 8, 32, 48, 3)
  out0, cache0 = vae.decode_chunk(params, z[:, 0:3])
  shapes0 = jax.tree.map(lambda a: a.shape, cache0)
  out1, cache1 = vae.decode_chunk(params, z[:, 3:6], cache0)
  assert jax.tree.map(lambda a: a.shape, cache1) == shapes0  # one jitted step serves every later chunk
  out2, _ = vae.decode_chunk(params, z[:, 6:9], cache1)
  assert out0.shape[1] == 9 and out1.shape[1] == 12 and out2.shape[1] == 12
  streamed = np.concatenate([out0, out1, out2], axis=1)
  np.testing.assert_allclose(streamed, whole, atol=1e-5, rtol=0)
  assert np.abs(whole).max() <= 1.0


@pytest.mark.parametrize("per_call", [1, 2])
def test_decode_in_pieces_equals_one_call(setup, per_call):
  """decode_frames_per_call: a chunk decoded a piece at a time through the cache gives the frames and the
  cache of one call (issue 14: fewer frames per call, fewer activations alive at once)."""
  vae, params = setup
  pieces = WanVAE(fx.CONFIG, dtype=jnp.float32, conv_impl="3d", decode_frames_per_call=per_call)
  z = jnp.asarray(fx.latents(seed=7, batch=1, frames=6))
  out0, cache0 = vae.decode_chunk(params, z[:, 0:3])
  p0, pc0 = pieces.decode_chunk(params, z[:, 0:3])
  np.testing.assert_allclose(np.asarray(p0), np.asarray(out0), atol=1e-5, rtol=0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0), pc0, cache0)
  out1, _ = vae.decode_chunk(params, z[:, 3:6], cache0)
  p1, _ = pieces.decode_chunk(params, z[:, 3:6], pc0)
  assert p0.shape[1] == 9 and p1.shape[1] == 12
  np.testing.assert_allclose(np.asarray(p1), np.asarray(out1), atol=1e-5, rtol=0)
  with pytest.raises(ValueError, match="decode_frames_per_call must be >= 1"):
    WanVAE(fx.CONFIG, decode_frames_per_call=0)


@pytest.mark.parametrize("first_frames", [1, 3])
def test_full_resolution_layers_by_frame_give_the_same_decode(setup, first_frames):
  """VaeOptions.tail_by_frame: the layers after the last temporal upsampling, one video frame at a time under a
  scan with their causal cache carried, give the frames and the cache of the whole-chunk decode (float32: equal
  up to the order of sums); WanVAE turns it on with decode_frames_per_call unless told."""
  vae, params = setup
  by_frame = WanVAE(fx.CONFIG, dtype=jnp.float32, conv_impl="3d", tail_by_frame=True)
  z = jnp.asarray(fx.latents(seed=8, batch=2, frames=first_frames + 3))
  whole0, cache0 = vae.decode_chunk(params, z[:, :first_frames])
  frames0, c0 = by_frame.decode_chunk(params, z[:, :first_frames])
  whole1, _ = vae.decode_chunk(params, z[:, first_frames:], cache0)
  frames1, c1 = by_frame.decode_chunk(params, z[:, first_frames:], c0)
  assert frames0.shape == whole0.shape and frames0.shape[1] == 1 + 4 * (first_frames - 1) and frames1.shape[1] == 12
  for a, b in ((frames0, whole0), (frames1, whole1)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)
  assert sorted(c0) == sorted(cache0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0), c0, cache0)
  assert not vae.options.tail_by_frame and WanVAE(fx.CONFIG, decode_frames_per_call=1).options.tail_by_frame
  assert not WanVAE(fx.CONFIG, decode_frames_per_call=1, tail_by_frame=False).options.tail_by_frame


def test_streaming_encode_equals_whole(setup):
  vae, params = setup
  v = jnp.asarray(fx.video(seed=6, frames=9))
  whole = np.asarray(vae.encode(params, v))
  assert whole.shape == (1, 3, 2, 3, 16)
  np.testing.assert_allclose(np.asarray(vae.encode(params, v, chunk_frames=4)), whole, atol=1e-5, rtol=0)


def test_bad_latents(setup):
  vae, params = setup
  with pytest.raises(ValueError, match="latents have 4 channels, the VAE expects 16"):
    vae.decode(params, jnp.zeros((1, 3, 4, 6, 4)))
  with pytest.raises(ValueError, match="channels-last"):
    vae.decode(params, jnp.zeros((3, 4, 6, 16)))


def test_bad_video_length(setup):
  vae, params = setup
  with pytest.raises(ValueError, match=r"video has 8 frames; the VAE encodes 1 \+ 4k frames"):
    vae.encode(params, jnp.zeros((1, 8, 16, 24, 3)))
  with pytest.raises(ValueError, match="multiple of 4 frames, got 3"):
    vae.encode_chunk(params, jnp.zeros((1, 3, 16, 24, 3)), cache={})
  with pytest.raises(ValueError, match="multiples of 8"):
    vae.encode(params, jnp.zeros((1, 5, 12, 24, 3)))


def test_codec_folder_loads_with_frames_per_call(setup, tmp_path):
  """load_latent_codec's decode_frames_per_call (sample --vae_frames_per_call) and tail_by_frame reach the Wan VAE
  it builds."""
  from hybrid_forcing_jax.checkpoint import flatten, save_checkpoint
  from hybrid_forcing_jax.latent_codec import load_latent_codec
  _, params = setup
  save_checkpoint(str(tmp_path / "vae"), "wan_vae", fx.CONFIG, {k: np.asarray(v) for k, v in flatten(params).items()})
  default, _ = load_latent_codec(str(tmp_path / "vae"))
  one, _ = load_latent_codec(str(tmp_path / "vae"), decode_frames_per_call=1)
  assert default.decode_frames_per_call is None and one.decode_frames_per_call == 1
  assert not default.options.tail_by_frame and one.options.tail_by_frame   # the small-memory setting does both
  whole, _ = load_latent_codec(str(tmp_path / "vae"), decode_frames_per_call=1, tail_by_frame=False)
  assert not whole.options.tail_by_frame


def test_checkpoint_of_another_architecture(tmp_path):
  from tests import dit_fixtures
  dit = dit_fixtures.tiny_diffusers_model(seed=0)
  dit.save_pretrained(tmp_path / "dit", safe_serialization=True)
  with pytest.raises(ValueError, match="not a Wan VAE checkpoint"):
    convert_vae(str(tmp_path / "dit" / "diffusion_pytorch_model.safetensors"), str(tmp_path / "out"), progress=False)
  # A converted DiT folder loaded as a VAE, and a VAE folder loaded as a DiT.
  from convert.wan_dit import convert_dit
  convert_dit(str(tmp_path / "dit" / "diffusion_pytorch_model.safetensors"), str(tmp_path / "dit_out"), progress=False)
  with pytest.raises(ValueError, match="holds a 'wan_dit' checkpoint, not 'wan_vae'"):
    load_checkpoint(str(tmp_path / "dit_out"), "wan_vae")


def test_incomplete_or_misshapen_vae_checkpoint(tmp_path):
  state = {k: v.contiguous() for k, v in fx.original_state_dict(fx.tiny_diffusers_vae(seed=1)).items()}
  missing = dict(state)
  del missing["decoder.upsamples.7.time_conv.weight"]
  save_file(missing, str(tmp_path / "missing.safetensors"))
  with pytest.raises(ValueError, match=r"missing from the checkpoint: \['decoder.upsamples.7.time_conv.weight'\]"):
    convert_vae(str(tmp_path / "missing.safetensors"), str(tmp_path / "a"), progress=False)
  extra = dict(state, **{"decoder.upsamples.4.residual.9.weight": torch.zeros(1)})
  save_file(extra, str(tmp_path / "extra.safetensors"))
  with pytest.raises(ValueError, match=r"not part of the 'wan' format.*decoder.upsamples.4.residual.9.weight"):
    convert_vae(str(tmp_path / "extra.safetensors"), str(tmp_path / "b"), progress=False)
  bad = dict(state, **{"decoder.head.2.weight": torch.zeros(3, 8, 3, 3, 1)})
  save_file(bad, str(tmp_path / "bad.safetensors"))
  with pytest.raises(ValueError, match=r"'decoder.head.2.weight' has shape \(3, 8, 3, 3, 1\), expected \(3, 8, 3, 3, 3\)"):
    convert_vae(str(tmp_path / "bad.safetensors"), str(tmp_path / "c"), progress=False)


def test_convert_cli(tmp_path):
  """`python -m convert --model=vae` converts a Wan .pth."""
  import os
  import subprocess
  import sys
  torch.save(fx.original_state_dict(fx.tiny_diffusers_vae(seed=1)), tmp_path / "Wan2.1_VAE.pth")
  cmd = [sys.executable, "-m", "convert", "--model=vae", f"--src={tmp_path}/Wan2.1_VAE.pth", f"--out={tmp_path}/out"]
  done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert done.returncode == 0, done.stderr
  config, params = load_checkpoint(str(tmp_path / "out"), "wan_vae")
  assert config == fx.CONFIG
