"""The text encoder with its weights on the host (TextEncoder(weights_on_host=True)): the same embeddings
bit for bit as with them on the device, no parameter left on the device after a prompt is encoded, at
most two layers' weights there while one is, and a prompt switch mid-stream unchanged by it."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybrid_forcing_jax import text_encoder
from hybrid_forcing_jax.text_encoder import UMT5_XXL, TextEncoder, init_params, tiny_umt5_config
from tests.test_sample import hybrid_stream, tiny_wan_model  # noqa: F401  (the fixture, reused)

CONFIG = tiny_umt5_config()   # 3 layers; per layer q, k, v [24, 32]
LENGTH = 40
HOST_KINDS = ("pinned_host", "unpinned_host")


def prompts_ids(batch=3):
  rng = np.random.default_rng(1)
  lengths = np.array([LENGTH, 17, 1])[:batch]
  mask = (np.arange(LENGTH)[None] < lengths[:, None]).astype(np.int32)
  return np.where(mask > 0, rng.integers(2, CONFIG.vocab_size, (batch, LENGTH)), 0), mask


def device_arrays():
  return [a for a in jax.live_arrays() if a.sharding.memory_kind not in HOST_KINDS]


@pytest.fixture(params=["pinned_host", "numpy"])
def host_kind(request, monkeypatch):
  """Both host forms: pinned memory where the client has it (JAX's CPU client does), else NumPy."""
  if request.param == "numpy":
    monkeypatch.setattr(text_encoder, "host_memory_kind", lambda device: None)
  return request.param


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_embeddings_equal_those_of_the_device_resident_encoder(host_kind, dtype):
  params = init_params(CONFIG, jax.random.key(0), param_dtype=dtype)
  on_device = TextEncoder(CONFIG, params, dtype=dtype, text_len=LENGTH)
  on_host = TextEncoder(CONFIG, params, dtype=dtype, text_len=LENGTH, weights_on_host=True)
  assert on_host.params is None
  assert on_host.host_resident.memory_kind == (None if host_kind == "numpy" else "pinned_host")
  ids, mask = prompts_ids()
  want = on_device.encode_ids(ids, mask)
  got = on_host.encode_ids(ids, mask)
  assert got.dtype == want.dtype and got.shape == want.shape == (3, LENGTH, CONFIG.dim)
  assert got.sharding.memory_kind not in HOST_KINDS   # the context stays on the device for the DiT
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  # A second prompt batch (the weights were freed on the device after the first, not lost on the host).
  np.testing.assert_array_equal(np.asarray(on_host.encode_ids(ids[1:], mask[1:])), np.asarray(want[1:]))


def test_no_parameter_on_the_device_after_encoding(host_kind):
  encoder = TextEncoder(CONFIG, init_params(CONFIG, jax.random.key(0)), text_len=LENGTH, weights_on_host=True)
  held = encoder.host_resident.host_arrays()
  assert len(held) == 1 + CONFIG.num_layers * 10 + 1   # embedding, 10 arrays per layer, final norm
  for array in held:
    assert isinstance(array, np.ndarray) or array.sharding.memory_kind in HOST_KINDS, array.sharding
  ids, mask = prompts_ids()
  before = device_arrays()
  layer_shape = (CONFIG.dim_attn, CONFIG.dim)   # q, k and v of one layer
  layers_seen = []
  run_layer = encoder.host_resident._layer

  def counting_layer(*args):
    layers_seen.append(sum(a.shape == layer_shape for a in device_arrays()) // 3)
    return run_layer(*args)

  encoder.host_resident._layer = counting_layer
  context = encoder.encode_ids(ids, mask)
  # While encoding: this layer's weights on the device and at most the next one's (copied meanwhile).
  assert layers_seen == [2, 2, 1]
  # After: of all the device arrays made, only the context is left.
  new = [a for a in device_arrays() if not any(a is b for b in before)]
  assert len(new) == 1 and new[0] is context


class _Device:
  def __init__(self, stats):
    self.stats = stats

  def memory_stats(self):
    return self.stats


def test_default_rule_big_encoders_on_a_small_accelerator(monkeypatch):
  assert not text_encoder.weights_on_host_by_default(UMT5_XXL)   # this CPU: one memory
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  gib = 2**30
  # umT5-XXL, 11 GB in bf16: on the host for a 24 GB or 40 GB card, on the device of an 80 GB H100.
  assert text_encoder.weights_on_host_by_default(UMT5_XXL, _Device({"bytes_limit": 22 * gib}))
  assert text_encoder.weights_on_host_by_default(UMT5_XXL, _Device({"bytes_limit": 38 * gib}))
  assert not text_encoder.weights_on_host_by_default(UMT5_XXL, _Device({"bytes_limit": 75 * gib}))
  # A device that does not say its size: any encoder of 1 GiB or more goes to the host.
  assert text_encoder.weights_on_host_by_default(UMT5_XXL, _Device(None))
  assert not text_encoder.weights_on_host_by_default(CONFIG, _Device(None))      # a few kB
  assert not text_encoder.weights_on_host_by_default(CONFIG, _Device({"bytes_limit": gib}))


def test_prompt_switch_mid_stream_with_the_weights_on_the_host(tiny_wan_model):  # noqa: F811
  """test_sample's switch test on the host-resident encoder: the second prompt is encoded mid-stream,
  after the first prompt's weights were freed on the device."""
  from hybrid_forcing_jax.pipeline import from_checkpoints
  pipe = from_checkpoints(hybrid_stream(), text_weights_on_host=True, **tiny_wan_model)

  def video(schedule):
    return [f for _, f in pipe.frames(schedule, height=64, width=64, seed=0, num_chunks=2)]

  calm, switched = video([(0, "a blue square bouncing")]), video([(0, "a blue square bouncing"), (1, "a red circle")])
  assert np.array_equal(calm[0], switched[0])
  assert not np.array_equal(calm[1], switched[1])
