"""The JAX Wan VAE, loaded through the converter from both formats, equals diffusers' AutoencoderKLWan."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
torch = pytest.importorskip("torch")  # the test extra; without it this module is skipped
convert_wan_vae_to_diffusers = pytest.importorskip("diffusers.loaders.single_file_utils").convert_wan_vae_to_diffusers

from convert.wan_vae import convert_vae
from hybrid_forcing_jax.checkpoint import flatten, load_checkpoint
from hybrid_forcing_jax.vae import WanVAE
from tests import vae_fixtures as fx
from tests.torch_reference import assert_same_state_dict


def rel_err(a, b):
  return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def model():
  return fx.tiny_diffusers_vae(seed=0)


@pytest.fixture(scope="module")
def folders(model, tmp_path_factory):
  """The same weights converted from the diffusers safetensors and from Wan's .pth."""
  root = tmp_path_factory.mktemp("vae")
  model.save_pretrained(root / "diffusers", safe_serialization=True)
  convert_vae(str(root / "diffusers" / "diffusion_pytorch_model.safetensors"), str(root / "from_diffusers"),
              dtype="float32", progress=False)
  torch.save(fx.original_state_dict(model), root / "Wan2.1_VAE.pth")
  config = convert_vae(str(root / "Wan2.1_VAE.pth"), str(root / "from_wan"), dtype="float32", progress=False)
  assert config == fx.CONFIG  # architecture inferred from the shapes
  return {"diffusers": str(root / "from_diffusers"), "wan": str(root / "from_wan")}


@pytest.fixture(scope="module")
def vae32():
  return WanVAE(fx.CONFIG, dtype=jnp.float32, conv_impl="3d")  # the fastest layout on the CPU


@pytest.mark.parametrize("fmt", ["diffusers", "wan"])
def test_decoder_matches_diffusers(fmt, model, folders, vae32):
  z = fx.latents(seed=1)  # 6 latent frames -> 21 frames of 32x48
  want = fx.diffusers_decode(model, z)
  assert 0.2 < np.mean(np.abs(want) < 1) < 0.99  # the clamp leaves enough values to compare
  _, params = load_checkpoint(folders[fmt], "wan_vae", dtype=jnp.float32)
  got = np.asarray(vae32.decode(params, z))
  assert got.shape == want.shape == (1, 21, 32, 48, 3)
  assert rel_err(got, want) <= 1e-4


@pytest.mark.parametrize("fmt", ["diffusers", "wan"])
def test_encoder_matches_diffusers(fmt, model, folders, vae32):
  v = fx.video(seed=2)  # 9 frames of 16x24 -> 3 latent frames of 2x3
  want = fx.diffusers_encode(model, v)
  _, params = load_checkpoint(folders[fmt], "wan_vae", dtype=jnp.float32)
  got = np.asarray(vae32.encode(params, v))
  assert got.shape == want.shape == (1, 3, 2, 3, 16) and got.dtype == np.float32
  assert rel_err(got, want) <= 1e-4


def test_both_formats_give_identical_checkpoints(folders):
  _, a = load_checkpoint(folders["diffusers"], "wan_vae")
  _, b = load_checkpoint(folders["wan"], "wan_vae")
  a, b = flatten(a), flatten(b)
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_original_format_names_agree_with_diffusers_converter(model):
  original = fx.original_state_dict(model)
  assert "decoder.upsamples.4.shortcut.weight" in original and "decoder.middle.1.to_qkv.weight" in original
  back = convert_wan_vae_to_diffusers(dict(original))
  assert_same_state_dict(back, model.state_dict())


def test_bf16_default(model, folders):
  """Default conversion stores conv weights in bf16 (norms and biases float32); bf16 compute."""
  config, params = load_checkpoint(folders["diffusers"], "wan_vae", dtype=jnp.bfloat16)
  assert params["decoder"]["upsamples"]["4"]["residual"]["2"]["weight"].dtype == jnp.bfloat16
  assert params["decoder"]["upsamples"]["4"]["residual"]["0"]["gamma"].dtype == jnp.float32
  z = fx.latents(seed=1, frames=2)  # bf16 convolutions are slow on the CPU
  out = WanVAE(config, conv_impl="3d").decode(params, z)
  assert out.dtype == jnp.bfloat16
  assert rel_err(np.asarray(out, np.float32), fx.diffusers_decode(model, z)) < 3e-2


def test_other_conv_layouts_compute_the_same_function(model, folders):
  """The cuDNN-layout variants the benchmark chooses among (fold_in, the GPU default, and fold_out; repeat upsample)."""
  config, params = load_checkpoint(folders["diffusers"], "wan_vae", dtype=jnp.float32)
  z = fx.latents(seed=3, frames=2)
  want = fx.diffusers_decode(model, z)
  for conv_impl, upsample_impl in [("fold_in", "repeat"), ("8:fold_out,16:fold_in", "subpixel")]:
    got = WanVAE(config, dtype=jnp.float32, conv_impl=conv_impl, upsample_impl=upsample_impl).decode(params, z)
    assert rel_err(got, want) <= 1e-4, (conv_impl, upsample_impl)


def test_random_init_has_the_checkpoint_shapes():
  from hybrid_forcing_jax.vae import init_params, param_shapes
  got = jax.tree.map(lambda a: (a.shape, a.dtype), init_params(fx.CONFIG))
  want = jax.tree.map(lambda a: (a.shape, a.dtype), param_shapes(fx.CONFIG))
  assert got == want
