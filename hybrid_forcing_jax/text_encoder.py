"""The umT5 encoder (Wan's text encoder, umT5-XXL) in Flax, with scanned layers and a prompt cache.

Semantics follow transformers' `UMT5EncoderModel` (equal to Wan's `wan/modules/t5.py` T5Encoder with
`shared_pos=False`): pre-norm blocks with RMS norms (no mean, no bias, statistics in float32), attention
without the 1/sqrt(d) scaling, an additive relative-position bias that every layer owns (unlike T5,
where only layer 0 has one), and a gated tanh-GELU FFN, gelu(gate(x)) * fc1(x).

Parameters carry Wan's original names stacked over layers (`blocks.attn.q.weight` [layers, out, in]);
see hybrid_forcing_jax/checkpoint.py. Matmul weights and the token embedding are stored in bf16 by
default; norms and the position-bias tables in float32. The residual stream, attention scores and
softmax are float32 whatever the compute dtype.

Output rows at padding positions are zeroed, as Self-Forcing does (Wan truncates to the real length
and the DiT re-pads with zeros, which is the same thing).

`TextEncoder(..., weights_on_host=True)` keeps the parameters in host memory between prompts and runs
the encoder a layer at a time, each layer's weights copied to the device just before it runs and freed
after: umT5-XXL's 11 GB never sit in GPU memory, at most two of its 24 layers (0.8 GB) do, and only
while a prompt is encoded. The embeddings (the DiT's context) are made and kept on the device.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hybrid_forcing_jax.config_io import JsonConfig
from hybrid_forcing_jax import layers
from hybrid_forcing_jax.layers import Dtype, RMSNorm, gelu_tanh


@dataclasses.dataclass(frozen=True)
class UMT5Config(JsonConfig):
  vocab_size: int = 256384
  dim: int = 4096
  dim_attn: int = 4096  # num_heads * head_dim (transformers' d_kv is the head dim)
  ffn_dim: int = 10240
  num_heads: int = 64
  num_layers: int = 24
  num_buckets: int = 32
  max_distance: int = 128
  eps: float = 1e-6

  def __post_init__(self):
    if self.dim_attn % self.num_heads:
      raise ValueError(f"UMT5Config: dim_attn {self.dim_attn} is not divisible by num_heads {self.num_heads}")
    if self.num_buckets < 4 or self.num_buckets % 2:
      raise ValueError(f"UMT5Config: num_buckets must be even and >= 4, got {self.num_buckets}")
    if self.max_distance <= self.num_buckets // 4:
      raise ValueError(f"UMT5Config: max_distance {self.max_distance} must exceed num_buckets // 4")

  @property
  def head_dim(self) -> int:
    return self.dim_attn // self.num_heads


UMT5_XXL = UMT5Config()
TEXT_LEN = 512  # Wan's `text_len`: prompts are padded / truncated to this many tokens


def tiny_umt5_config(**overrides) -> UMT5Config:
  """For CPU tests: head_dim 6 with dim_attn 24 != dim 32 keeps the attention width independent."""
  base = dict(vocab_size=100, dim=32, dim_attn=24, ffn_dim=64, num_heads=4, num_layers=3, num_buckets=32,
              max_distance=20)
  base.update(overrides)
  return UMT5Config(**base)


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """Bidirectional T5 buckets of (key - query) as an int32 [length, length] table.

  Computed in NumPy at trace time (the length is static), in float32 like transformers, so the bucket
  edges where the log lands on an integer agree with it exactly (the tests compare all of 512 x 512).
  """
  rel = np.arange(length)[None, :] - np.arange(length)[:, None]
  half = num_buckets // 2
  buckets = (rel > 0).astype(np.int64) * half
  rel = np.abs(rel)
  max_exact = half // 2
  # Distance 0 would give log(0); it is a small distance, so its "large" value is never used.
  ratio = np.maximum(rel, 1).astype(np.float32) / np.float32(max_exact)
  log_ratio = np.log(ratio) / np.float32(math.log(max_distance / max_exact))
  large = max_exact + (log_ratio * np.float32(half - max_exact)).astype(np.int64)
  large = np.minimum(large, half - 1)
  return (buckets + np.where(rel < max_exact, rel, large)).astype(np.int32)


def Linear(features: int, dtype: Dtype, param_dtype: Dtype, std: float = 1.0, *, name: str):  # noqa: N802
  """T5's bias-free Linear (W [out, in], normal(std) init) with a float32 result."""
  return layers.Linear(features, dtype, param_dtype, nn.initializers.normal(std), use_bias=False,
                       output_dtype=jnp.float32, name=name)


class Embedding(nn.Module):
  num: int
  features: int
  param_dtype: Dtype
  std: float = 1.0

  @nn.compact
  def __call__(self, ids):
    w = self.param("weight", nn.initializers.normal(self.std), (self.num, self.features), self.param_dtype)
    return jnp.take(w, ids, axis=0)


class RelativeEmbedding(nn.Module):
  """Per-layer position bias [H, Lq, Lk] from the shared bucket table; float32 (it is tiny)."""
  config: UMT5Config

  @nn.compact
  def __call__(self, buckets):
    c = self.config
    table = Embedding(c.num_buckets, c.num_heads, jnp.float32, (2 * c.num_buckets * c.num_heads) ** -0.5,
                      name="embedding")(buckets)  # [Lq, Lk, H]
    return jnp.transpose(table, (2, 0, 1))


class Attention(nn.Module):
  config: UMT5Config
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, x, bias):
    """x [B, L, dim]; bias [B, H, L, L] float32 (position bias plus key-padding mask)."""
    c = self.config
    b, length, _ = x.shape
    lin = lambda name, n, std: Linear(n, self.dtype, self.param_dtype, std, name=name)
    split = lambda y: y.astype(self.dtype).reshape(b, length, c.num_heads, c.head_dim)
    q = split(lin("q", c.dim_attn, (c.dim * c.head_dim) ** -0.5)(x))
    k = split(lin("k", c.dim_attn, c.dim ** -0.5)(x))
    v = split(lin("v", c.dim_attn, c.dim ** -0.5)(x))
    # Not the project's `attention` entry point: T5 adds a per-layer bias and does not scale q.k, and
    # at 512 tokens the explicit score matrix (64 MiB in float32 per prompt) is cheap.
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) + bias
    probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v, preferred_element_type=jnp.float32)
    out = out.astype(self.dtype).reshape(b, length, c.dim_attn)
    return lin("o", c.dim, c.dim_attn ** -0.5)(out)


class Gate(nn.Module):
  """Wan's `ffn.gate` = Sequential(Linear, GELU): the parameter path is `gate.0.weight`."""
  config: UMT5Config
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, x):
    c = self.config
    return gelu_tanh(Linear(c.ffn_dim, self.dtype, self.param_dtype, c.dim ** -0.5, name="0")(x))


class FeedForward(nn.Module):
  config: UMT5Config
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, x):
    c = self.config
    # The gated product is formed in float32: T5 activations are large here (the reason transformers
    # keeps `wo` in float32), and a bf16 product would round twice.
    h = Gate(c, self.dtype, self.param_dtype, name="gate")(x) * Linear(
        c.ffn_dim, self.dtype, self.param_dtype, c.dim ** -0.5, name="fc1")(x)
    return Linear(c.dim, self.dtype, self.param_dtype, c.ffn_dim ** -0.5, name="fc2")(h)


class UMT5Block(nn.Module):
  """One pre-norm encoder layer; scanned: (x, shared) -> (x, None), x float32 [B, L, dim]."""
  config: UMT5Config
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, x, shared):
    c = self.config
    bias = RelativeEmbedding(c, name="pos_embedding")(shared["buckets"])[None] + shared["mask_bias"]
    x = x + Attention(c, self.dtype, self.param_dtype, name="attn")(RMSNorm(c.eps, self.dtype, name="norm1")(x), bias)
    x = x + FeedForward(c, self.dtype, self.param_dtype, name="ffn")(RMSNorm(c.eps, self.dtype, name="norm2")(x))
    return x, None


class UMT5Encoder(nn.Module):
  """ids [B, L] int, mask [B, L] (1 = token, 0 = padding) -> [B, L, dim] in `dtype`, padding rows zero."""
  config: UMT5Config
  dtype: Dtype = jnp.bfloat16
  param_dtype: Dtype = jnp.bfloat16

  @nn.compact
  def __call__(self, ids, mask=None):
    c = self.config
    ids = jnp.asarray(ids)
    if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f"UMT5Encoder: token ids must be an integer array [B, L], got {ids.dtype} {ids.shape}")
    if mask is None:
      mask = jnp.ones(ids.shape, jnp.int32)
    mask = jnp.asarray(mask)
    if mask.shape != ids.shape:
      raise ValueError(f"UMT5Encoder: mask shape {mask.shape} differs from token ids shape {ids.shape}")
    if not isinstance(ids, jax.core.Tracer):  # values are only checkable outside jit
      check_token_ids(np.asarray(ids), c.vocab_size)
    keep = mask > 0
    x = Embedding(c.vocab_size, c.dim, self.param_dtype, 1.0, name="token_embedding")(ids).astype(jnp.float32)
    blocks = nn.scan(UMT5Block, variable_axes={"params": 0}, split_rngs={"params": True},
                     in_axes=nn.broadcast, length=c.num_layers)(c, self.dtype, self.param_dtype, name="blocks")
    x, _ = blocks(x, block_inputs(c, keep))
    return zero_padding_rows(RMSNorm(c.eps, self.dtype, name="norm")(x), keep)


def block_inputs(c: UMT5Config, keep) -> dict:
  """What every UMT5Block shares: the relative-position buckets and the key mask's bias. Masked keys get
  the most negative float32 (as transformers and Wan do), not -inf: a row of only padding keys then stays
  finite instead of turning into NaN."""
  return dict(buckets=relative_position_buckets(keep.shape[1], c.num_buckets, c.max_distance),
              mask_bias=jnp.where(keep, 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :])


def zero_padding_rows(x, keep):
  """Output rows at padding positions zeroed (Self-Forcing's convention)."""
  return jnp.where(keep[..., None], x, jnp.zeros((), x.dtype))


def check_token_ids(ids: np.ndarray, vocab_size: int) -> None:
  if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    raise ValueError(f"UMT5Encoder: token ids {sorted(set(bad.tolist()))[:10]} are outside the vocabulary "
                     f"[0, {vocab_size}) (is the tokenizer the model's?)")


def init_params(config: UMT5Config, key, *, param_dtype=jnp.bfloat16, length: int = 8):
  """Random parameters with T5's (Mesh TensorFlow's) initialisers; for tests and benchmarks."""
  model = UMT5Encoder(config, dtype=param_dtype, param_dtype=param_dtype)
  ids = jax.ShapeDtypeStruct((1, length), jnp.int32)
  return model.init(key, jnp.zeros(ids.shape, ids.dtype))["params"]


def param_shapes(config: UMT5Config, param_dtype=jnp.bfloat16) -> Any:
  return jax.eval_shape(lambda k: init_params(config, k, param_dtype=param_dtype), jax.random.key(0))



# On-device weights cost nothing per prompt, host-resident ones a copy before each new prompt's first frame
# (umT5-XXL: +147 ms on an H200, docs/benchmarks.md). So the weights leave the device only where they would
# take a large share of its memory: 11 GB of umT5-XXL stays on an 80 GB H100 or a 141 GB H200 (24.5 GiB peak
# stream), and goes to the host on a 24 GB or 40 GB card.
HOST_WEIGHTS_DEVICE_SHARE = 0.25


def weights_on_host_by_default(config: UMT5Config, device=None) -> bool:
  """The rule `sample` and the pipeline follow: on an accelerator (GPU, TPU), an encoder whose weights
  would take more than a quarter (HOST_WEIGHTS_DEVICE_SHARE) of the device's memory keeps them on the host
  between prompts, to leave that memory to the DiT at the cost of copying them over for each new prompt;
  where the device does not say its size, an encoder of 1 GiB or more does. A small encoder (the world's)
  stays on the device. On the CPU host and device are the same memory: nothing to gain."""
  if jax.default_backend() == "cpu":
    return False
  size = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(param_shapes(config)))
  device = device or jax.devices()[0]
  try:
    limit = (device.memory_stats() or {}).get("bytes_limit")
  except (NotImplementedError, jax.errors.JaxRuntimeError):
    limit = None
  return size > HOST_WEIGHTS_DEVICE_SHARE * limit if limit else size >= 2**30


def host_memory_kind(device) -> str | None:
  """'pinned_host' where the device's client offers it (CUDA; JAX's CPU client too): page-locked memory,
  from which copies to the device run asynchronously at full PCIe speed. None: plain NumPy arrays."""
  try:
    kinds = {memory.kind for memory in device.addressable_memories()}
  except (NotImplementedError, jax.errors.JaxRuntimeError):   # a client without memory spaces
    return None
  return "pinned_host" if "pinned_host" in kinds else None


def host_cpu_device():
  """The CPU client's device, where checkpoints meant for the host are read (so that they never pass
  through the accelerator's memory); None where JAX was started without it (JAX_PLATFORMS=cuda)."""
  try:
    return jax.local_devices(backend="cpu")[0]
  except RuntimeError:
    return None


class HostResidentEncoder:
  """umT5 with its parameters in host memory, run a layer at a time: ids, mask -> [B, L, dim] on `device`.

  The token embedding (2.1 GB for umT5-XXL) stays a NumPy table: only the prompt's rows are gathered on
  the host and sent. Each scanned layer is its own host tree (pinned where the client has pinned memory),
  copied to the device while the layer before it runs and deleted once it has run, so at most two
  layers' weights are on the device at a time and none once a prompt is encoded. The layer and the final
  norm are UMT5Encoder's own modules, so the result equals the one-call encoder's bit for bit (the tests
  check it).
  """

  def __init__(self, config: UMT5Config, params, *, dtype=jnp.bfloat16, device=None):
    self.config = config
    self.device = device if device is not None else jax.devices()[0]
    self.memory_kind = host_memory_kind(self.device)
    self._on_device = jax.sharding.SingleDeviceSharding(self.device, memory_kind=self.device.default_memory().kind)
    to_host = (np.asarray if self.memory_kind is None else functools.partial(
        jax.device_put, device=self._on_device.with_memory_kind(self.memory_kind)))
    host = jax.tree.map(np.asarray, params)
    self.embedding = host["token_embedding"]["weight"]
    self.layers = [jax.tree.map(lambda a, i=i: to_host(a[i]), host["blocks"]) for i in range(config.num_layers)]
    self.norm = jax.tree.map(to_host, host["norm"])
    block = UMT5Block(config, dtype, dtype)
    final_norm = RMSNorm(config.eps, dtype)

    def layer(layer_params, x, keep):
      return block.apply({"params": layer_params}, x, block_inputs(config, keep))[0]

    def finish(norm_params, x, keep):
      return zero_padding_rows(final_norm.apply({"params": norm_params}, x), keep)

    self._layer, self._finish = jax.jit(layer), jax.jit(finish)

  def host_arrays(self) -> list:
    """Every parameter array the encoder holds (all in host memory)."""
    return [self.embedding] + jax.tree.leaves((self.layers, self.norm))

  def __call__(self, ids: np.ndarray, mask: np.ndarray) -> jnp.ndarray:
    # UMT5Encoder's embedding on the host: only the prompt's rows are gathered and sent.
    x = jax.device_put(self.embedding[ids].astype(np.float32), self._on_device)
    keep = jax.device_put(mask > 0, self._on_device)
    upcoming = jax.device_put(self.layers[0], self._on_device)
    for index in range(self.config.num_layers):
      current = upcoming
      if index + 1 < self.config.num_layers:   # its copy overlaps this layer's compute
        upcoming = jax.device_put(self.layers[index + 1], self._on_device)
      x = self._layer(current, x, keep)
      # Wait for the layer before freeing its weights and queueing the next copy: without the wait every
      # copy would be queued at once and all 24 layers would be on the device together.
      x.block_until_ready()
      for array in jax.tree.leaves(current):
        array.delete()
    return self._finish(jax.device_put(self.norm, self._on_device), x, keep)


class TextEncoder:
  """Host-side text encoding: prompts -> tokenizer -> jitted encoder -> [B, text_len, dim].

  tokenizer: a transformers tokenizer, or a folder path (local files only; see tokenizer.py).
  weights_on_host: keep the parameters in host memory and bring them to the device a layer at a time
  only to encode (HostResidentEncoder); `params` is then None and `host_resident` holds them.
  """

  def __init__(self, config: UMT5Config, params, tokenizer=None, *, dtype=jnp.bfloat16, text_len: int = TEXT_LEN,
               weights_on_host: bool = False):
    self.config, self.text_len = config, text_len
    if isinstance(tokenizer, str):
      from hybrid_forcing_jax.tokenizer import load_tokenizer
      tokenizer = load_tokenizer(tokenizer)
    self.tokenizer = tokenizer
    if weights_on_host:
      self.params, self.host_resident = None, HostResidentEncoder(config, params, dtype=dtype)
      self._run = self.host_resident
    else:
      self.params, self.host_resident = params, None
      model = UMT5Encoder(config, dtype=dtype, param_dtype=dtype)
      apply = jax.jit(lambda p, ids, mask: model.apply({"params": p}, ids, mask))
      self._run = lambda ids, mask: apply(self.params, jnp.asarray(ids), jnp.asarray(mask))

  @classmethod
  def from_checkpoint(cls, folder: str, tokenizer=None, *, dtype=jnp.bfloat16, weights_on_host: bool | None = False,
                      **kwargs) -> "TextEncoder":
    """weights_on_host None: weights_on_host_by_default for the checkpoint's config."""
    from hybrid_forcing_jax.checkpoint import load_checkpoint, read_meta
    if weights_on_host is None:
      weights_on_host = weights_on_host_by_default(UMT5Config.from_dict(read_meta(folder)["config"]))
    # Weights meant for the host are read on the CPU client: umT5-XXL's 11 GB would otherwise pass
    # through the GPU while loading and set its peak memory.
    with jax.default_device(host_cpu_device() if weights_on_host else None):
      config, params = load_checkpoint(folder, "umt5", dtype=dtype)
    return cls(config, params, tokenizer, dtype=dtype, weights_on_host=weights_on_host, **kwargs)

  def encode_ids(self, ids, mask) -> jnp.ndarray:
    ids, mask = np.asarray(ids), np.asarray(mask)
    if ids.ndim != 2 or mask.shape != ids.shape:
      raise ValueError(f"TextEncoder: ids and mask must both be [B, L], got {ids.shape} and {mask.shape}")
    check_token_ids(ids, self.config.vocab_size)
    return self._run(ids.astype(np.int32), mask.astype(np.int32))

  def encode(self, prompts: str | Sequence[str]) -> jnp.ndarray:
    if self.tokenizer is None:
      raise ValueError("TextEncoder: no tokenizer was given; pass one or use encode_ids")
    from hybrid_forcing_jax.tokenizer import tokenize
    ids, mask = tokenize(self.tokenizer, [prompts] if isinstance(prompts, str) else list(prompts), self.text_len)
    return self.encode_ids(ids, mask)


class PromptEmbeddingCache:
  """LRU cache of prompt -> [text_len, dim] embeddings, so a long stream encodes each prompt once.

  `encode` maps a list of prompts to [B, text_len, dim] (e.g. `TextEncoder.encode`); misses of one
  call are encoded together in one batch.
  """

  def __init__(self, encode, max_entries: int = 64):
    if max_entries < 1:
      raise ValueError(f"PromptEmbeddingCache: max_entries must be >= 1, got {max_entries}")
    self._encode, self.max_entries = encode, max_entries
    self._entries: collections.OrderedDict[str, jnp.ndarray] = collections.OrderedDict()
    self.hits = self.misses = 0

  def __len__(self):
    return len(self._entries)

  def __contains__(self, prompt):
    return prompt in self._entries

  def get(self, prompt: str) -> jnp.ndarray:
    return self.get_many([prompt])[0]

  def get_many(self, prompts: Sequence[str]) -> list[jnp.ndarray]:
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
      raise TypeError("PromptEmbeddingCache.get_many: expects a list of prompt strings")
    missing = list(dict.fromkeys(p for p in prompts if p not in self._entries))
    self.hits += len(prompts) - sum(1 for p in prompts if p in missing)
    self.misses += len(missing)
    fresh = {}
    if missing:
      out = self._encode(missing)
      fresh = {p: out[i] for i, p in enumerate(missing)}
    result = []
    for p in prompts:
      value = fresh[p] if p in fresh else self._entries[p]
      self._entries[p] = value
      self._entries.move_to_end(p)
      result.append(value)
    while len(self._entries) > self.max_entries:
      self._entries.popitem(last=False)
    return result
