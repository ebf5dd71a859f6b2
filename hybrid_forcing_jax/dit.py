"""The Wan2.1 text-to-video DiT in Flax, with per-frame timesteps and scanned layers.

Latents are channels-last, x [B, F, H, W, C]; timesteps are per latent frame, t [B, F]. The 30 (or 40)
blocks are one `nn.scan` over stacked parameters, so compile time does not grow with depth. The
parameter tree carries Wan's original names (`blocks.self_attn.q.weight`, stacked over layers on axis
0); see hybrid_forcing_jax/checkpoint.py (files) and models.py (the kind table).

Attention layouts (`AttentionLayout`) and the methods that run them:
  * bidirectional (`__call__`): every token sees every token (teacher, critic);
  * block_causal (`__call__`): chunk c of `num_frame_per_block` latent frames sees chunks 0..c (training);
  * stream (`stream`): the current chunk sees the streaming cache (sink + window + linear memory), read
    through a typed `LayerCache` / `CacheView` (attention/hybrid.py), and returns its un-rotated K/V
    per layer for the cache write (hybrid_forcing_jax/streaming builds the cache and writes it);
  * recache (`recache`): cached frames re-encoded block-causally under a new prompt (prompt switch).
`__call__` always returns the velocity; `stream` returns (velocity, K/V), `recache` the K/V. A model whose
config.prediction is "x0" predicts the clean latent and returns the velocity it implies.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from hybrid_forcing_jax import flow
from hybrid_forcing_jax.attention import attention
from hybrid_forcing_jax.attention.hybrid import CacheView, LayerCache, stream_attention
from hybrid_forcing_jax.attention.prefix import prefix_attention
from hybrid_forcing_jax.config import WanConfig
from hybrid_forcing_jax.layers import Dtype, LayerNorm, Linear, RMSNorm, gelu_tanh, layer_norm
from hybrid_forcing_jax.mesh_batch import split_batch
from hybrid_forcing_jax.rope import apply_rope, rope_tables


@dataclasses.dataclass(frozen=True)
class AttentionLayout:
  """Which keys each query sees in self-attention; static (hashable): part of the trace."""
  kind: str = "bidirectional"  # or "block_causal", "stream", "recache"
  frames_per_chunk: int = 0  # latent frames per chunk (`num_frame_per_block`), for block_causal
  stream: Any = None  # streaming.config.StreamConfig, for stream

  def __post_init__(self):
    if self.kind not in ("bidirectional", "block_causal", "stream", "recache"):
      raise ValueError("AttentionLayout.kind must be 'bidirectional', 'block_causal', 'stream' or 'recache', "
                       f"got {self.kind!r}")
    if self.kind == "stream" and self.stream is None:
      raise ValueError("AttentionLayout: stream needs a StreamConfig")
    if self.kind == "block_causal" and self.frames_per_chunk < 1:
      raise ValueError(f"AttentionLayout: block_causal needs frames_per_chunk >= 1, got {self.frames_per_chunk}")

  @classmethod
  def block_causal(cls, frames_per_chunk: int) -> "AttentionLayout":
    return cls("block_causal", frames_per_chunk)

  @property
  def returns_kv(self) -> bool:
    """Stream and recache forwards hand the chunk's un-rotated K/V back for the cache."""
    return self.kind in ("stream", "recache")


@struct.dataclass
class BlockInputs:
  """What every scanned block reads (broadcast over the layers). The layout is a static field, so it
  rides through `nn.scan` / `nn.remat` beside the traced arrays."""
  e0: jnp.ndarray    # [B, F, 6, dim] float32 modulation
  cos: jnp.ndarray   # [F*T, D/2] RoPE tables of the queries
  sin: jnp.ndarray
  layout: AttentionLayout = struct.field(pytree_node=False)
  view: CacheView | None = None          # stream
  visible: jnp.ndarray | None = None     # block_causal / recache: keys seen by each query group [G]

# The primitives of the attention kernels' forward passes as a traced block holds them: cuDNN's fused
# attention (jax.nn.dot_product_attention binds the wrapper in its custom_vjp's forward) and the Pallas
# kernels (block-sparse Triton and Mosaic GPU). Their outputs (attention output, softmax statistics) are what
# their backward kernels read.
ATTENTION_KERNELS = frozenset({"dot_product_attention_fwd_wrapper", "dot_product_attention_fwd", "pallas_call"})


def _attention_kernels_saveable(prim, *_, **__) -> bool:
  return prim.name in ATTENTION_KERNELS


# Rematerialisation of each scanned block (what the backward pass keeps from the forward):
#   none: everything (fastest, most memory); full: only the block's inputs, the block is recomputed;
#   dots_saveable: the matmul outputs, the cheap elementwise work in between is recomputed (at 1.3B and
#     21 frames too much: the FFN's hidden layer alone is 32.8 GiB, docs/benchmarks.md);
#   attention_saveable: the attention kernels' outputs only (~0.1 GiB a layer at 832x480, 21 frames): the
#     backward recomputes the projections, norms and FFN, not the attention, most of a long sequence's
#     FLOPs. With the XLA attention (CPU) there is no kernel to keep: the same as full.
REMAT_POLICIES = {"none": None, "full": jax.checkpoint_policies.nothing_saveable,
                  "dots_saveable": jax.checkpoint_policies.dots_saveable,
                  "attention_saveable": _attention_kernels_saveable}


def sinusoidal_embedding(t: jnp.ndarray, dim: int) -> jnp.ndarray:
  """Wan's timestep embedding: cat(cos, sin) of t * 10000^(-i/half), in float32."""
  half = dim // 2
  freqs = jnp.power(10000.0, -jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class _Attention(nn.Module):
  """Wan's q, k, v, o projections with q/k RMSNorm across heads, shared by self- and cross-attention."""
  config: WanConfig
  dtype: Dtype
  param_dtype: Dtype
  backend: str

  def setup(self):
    c = self.config
    self.q, self.k, self.v, self.o = (Linear(c.dim, self.dtype, self.param_dtype) for _ in range(4))
    self.norm_q = RMSNorm(c.eps, self.dtype)
    self.norm_k = RMSNorm(c.eps, self.dtype)

  def heads(self, y):
    """[B, L, dim] -> [B, L, H, D]."""
    return y.reshape(y.shape[0], y.shape[1], self.config.num_heads, self.config.head_dim)


class SelfAttention(_Attention):
  def setup(self):
    super().setup()
    c = self.config
    if c.linear_proj:
      # Hybrid Forcing's read-out of the linear-attention memory (Eq. 7): Linear(head_dim, head_dim)
      # shared across heads, zero-initialised so a dense checkpoint starts out unchanged. Declared as
      # one parameter pytree so it exists even in layouts that never read the memory.
      zeros = lambda key, d: {"weight": jnp.zeros((d, d), self.param_dtype), "bias": jnp.zeros((d,), self.param_dtype)}
      self.linear_proj = self.param("linear_proj", zeros, c.head_dim)

  def project(self, x):
    """x [B, L, dim] -> q, k, v [B, L, H, D], q and k RMS-normed across heads, not yet rotated."""
    q, k, v = self.heads(self.norm_q(self.q(x))), self.heads(self.norm_k(self.k(x))), self.heads(self.v(x))
    return split_batch(q), split_batch(k), split_batch(v)

  def __call__(self, x, inputs: BlockInputs, cache: LayerCache | None, frame_tokens: int):
    """Returns the output and, for layouts that return K/V, this chunk's un-rotated (k, v)."""
    q, k, v = self.project(x)
    layout = inputs.layout
    if layout.kind == "stream":
      proj = self.linear_proj if self.config.linear_proj else None
      out = stream_attention(layout.stream, q, k, v, inputs.cos, inputs.sin, cache, inputs.view, frame_tokens, proj,
                             self.backend)
    else:
      qr, kr = apply_rope(q, inputs.cos, inputs.sin), apply_rope(k, inputs.cos, inputs.sin)
      if layout.kind == "bidirectional":
        out = attention(qr, kr, v, backend=self.backend)
      else:
        out = prefix_attention(qr, kr, v, inputs.visible, self.backend)
    new_kv = (k, v) if layout.returns_kv else None
    return self.o(out.reshape(x.shape[0], x.shape[1], self.config.dim)), new_kv


class CrossAttention(_Attention):
  """Text cross-attention; `text_kv` is separate so K/V are computed once per prompt."""

  def text_kv(self, context):
    return self.heads(self.norm_k(self.k(context))), self.heads(self.v(context))

  def __call__(self, x, kv):
    b, length, _ = x.shape
    out = attention(self.heads(self.norm_q(self.q(x))), kv[0], kv[1], backend=self.backend)
    return self.o(out.reshape(b, length, self.config.dim))


class FeedForward(nn.Module):
  config: WanConfig
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, x):
    h = gelu_tanh(Linear(self.config.ffn_dim, self.dtype, self.param_dtype, name="0")(x))
    return Linear(self.config.dim, self.dtype, self.param_dtype, name="2")(h)


class WanBlock(nn.Module):
  """One Wan block. Scanned: every method takes (carry, per_layer, inputs) and returns (carry, out);
  per_layer = (LayerCache or None, text_kv), inputs a BlockInputs (broadcast).

  The residual stream x [B, F, S, dim] stays in float32; modulation e0 [B, F, 6, dim] is per frame.
  """
  config: WanConfig
  dtype: Dtype
  param_dtype: Dtype
  backend: str

  def setup(self):
    c = self.config
    self.self_attn = SelfAttention(c, self.dtype, self.param_dtype, self.backend)
    self.cross_attn = CrossAttention(c, self.dtype, self.param_dtype, self.backend)
    self.norm3 = LayerNorm(c.eps, self.dtype)
    self.ffn = FeedForward(c, self.dtype, self.param_dtype)
    self.modulation = self.param(
        "modulation", lambda key, shape: jax.random.normal(key, shape, jnp.float32) / math.sqrt(c.dim),
        (1, 6, c.dim))

  def text_kv(self, context, per_layer, inputs):
    del per_layer, inputs
    return context, self.cross_attn.text_kv(context)

  def __call__(self, x, per_layer, inputs: BlockInputs):
    c = self.config
    b, f, s, _ = x.shape
    cache, text_kv = per_layer
    # e: 6 x [B, F, 1, dim] = shift/scale/gate for self-attention, then for the FFN (float32).
    e = jnp.split(self.modulation[None] + inputs.e0, 6, axis=2)

    def modulate(y, shift, scale):
      return (layer_norm(y, c.eps) * (1 + scale) + shift).astype(self.dtype)

    tokens = lambda y: y.reshape(b, f * s, y.shape[-1])
    y, new_kv = self.self_attn(tokens(modulate(x, e[0], e[1])), inputs, cache, s)
    x = x + y.reshape(b, f, s, c.dim).astype(jnp.float32) * e[2]
    y = self.cross_attn(tokens(self.norm3(x)), text_kv)
    x = x + y.reshape(b, f, s, c.dim).astype(jnp.float32)
    y = self.ffn(modulate(x, e[3], e[4]))
    x = x + y.astype(jnp.float32) * e[5]
    return x, new_kv


class WanDiT(nn.Module):
  """The Wan2.1 T2V DiT. Every method returns the flow-matching velocity in x's layout (and K/V where
  the streaming cache needs them)."""
  config: WanConfig
  dtype: Dtype = jnp.bfloat16
  param_dtype: Dtype = jnp.bfloat16
  attention_backend: str = "auto"
  remat: str = "none"  # a key of REMAT_POLICIES

  def setup(self):
    c = self.config
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"WanDiT: remat must be one of {sorted(REMAT_POLICIES)}, got {self.remat!r}")
    block = WanBlock
    if self.remat != "none":
      # prevent_cse=False: inside a scan the recomputation cannot be merged away, and CSE guards cost speed.
      block = nn.remat(WanBlock, prevent_cse=False, policy=REMAT_POLICIES[self.remat])
    self.blocks = nn.scan(
        block, variable_axes={"params": 0}, split_rngs={"params": True},
        in_axes=(0, nn.broadcast), length=c.num_layers, methods=["__call__", "text_kv"],
    )(c, self.dtype, self.param_dtype, self.attention_backend)
    self.patch_embedding = PatchEmbedding(c, self.dtype, self.param_dtype)
    self.text_embedding = TextEmbedding(c, self.dtype, self.param_dtype)
    # Time embedding and its projection stay in float32, as in Wan.
    self.time_embedding = TimeEmbedding(c)
    self.time_projection = TimeProjection(c)
    self.head = Head(c, self.dtype, self.param_dtype)

  def text_kv(self, context):
    """Per-layer cross-attention (k, v), each [num_layers, B, Lt, H, D]: compute once per prompt."""
    self._check_context(context)
    emb = self.text_embedding(context)
    return self.blocks.text_kv(emb, None, None)[1]

  def __call__(self, x, t, context=None, *, text_kv=None, frame_offset=0,
               layout: AttentionLayout = AttentionLayout(), frame_positions=None):
    """x [B, F, H, W, in_dim]; t [B, F] (or [B]); context [B, Lt, text_dim] or precomputed text_kv.
    layout: bidirectional or block_causal (streaming runs through `stream` and `recache`).
    frame_offset: temporal RoPE index of the first frame (an int or a traced scalar).
    frame_positions: int [F] temporal RoPE index of every frame (overrides frame_offset).
    """
    if layout.returns_kv:
      raise ValueError(f"WanDiT: the {layout.kind!r} layout runs through WanDiT.{layout.kind}, not __call__")
    self._check_latents(x)
    if (context is None) == (text_kv is None):
      raise ValueError("WanDiT: pass exactly one of `context` and `text_kv`")
    visible = None
    if layout.kind == "block_causal":
      gf = x.shape[1] // self.config.patch_size[0]
      if gf % layout.frames_per_chunk:
        raise ValueError(f"WanDiT: block_causal needs the {gf} latent frames to be a multiple of "
                         f"frames_per_chunk {layout.frames_per_chunk}")
      chunks = jnp.arange(gf // layout.frames_per_chunk, dtype=jnp.int32)
      visible = (chunks + 1) * layout.frames_per_chunk * self._frame_tokens(x)
    if frame_positions is None:
      frame_positions = frame_offset + jnp.arange(x.shape[1] // self.config.patch_size[0])
    text_kv = self.text_kv(context) if text_kv is None else text_kv
    return self._forward(x, t, text_kv, frame_positions, layout, None, visible=visible)[0]

  def stream(self, x, t, *, text_kv, frame_positions, cache: LayerCache, view: CacheView, stream_config):
    """The current chunk x [B, F, H, W, in_dim] at timesteps t [B, F] against the streaming cache:
    cache the stacked per-layer LayerCache [num_layers, ...], view what every layer reads about it,
    frame_positions int [F] the chunk's temporal RoPE indices. Returns (velocity, (k, v)), the chunk's
    un-rotated keys and values per layer, each [num_layers, B, F*tokens, H, D]."""
    layout = AttentionLayout("stream", stream_config.chunk_frames, stream_config)
    return self._forward(x, t, text_kv, frame_positions, layout, cache, view=view)

  def recache(self, x, t, *, text_kv, frame_positions, visible_frames):
    """Re-encode n cached frames x [B, n, H, W, in_dim] (chronological) block-causally: frame i sees the
    first visible_frames[i] frames (int [n]; 0 for an empty slot is read as 1). Returns their
    un-rotated (k, v) per layer, each [num_layers, B, n*tokens, H, D]."""
    visible = jnp.maximum(visible_frames, 1) * self._frame_tokens(x)
    return self._forward(x, t, text_kv, frame_positions, AttentionLayout("recache"), None, visible=visible)[1]

  def _forward(self, x, t, text_kv, frame_positions, layout, cache, *, view=None, visible=None):
    """Embed, run the scanned blocks, project out: (velocity, per-layer K/V or None)."""
    c = self.config
    self._check_latents(x)
    b, f, h, w, _ = x.shape
    t = self._check_timesteps(t, b, f)
    pt, ph, pw = c.patch_size
    gf, gh, gw = f // pt, h // ph, w // pw
    tokens = split_batch(self.patch_embedding(x))  # [B, gf, gh*gw, dim]
    e = self.time_embedding(sinusoidal_embedding(t[:, ::pt], c.freq_dim))  # [B, gf, dim], float32
    cos, sin = rope_tables(c, frame_positions, gh, gw)
    e0 = split_batch(self.time_projection(e))   # [B, gf, 6, dim]
    inputs = BlockInputs(e0, cos, sin, layout, view, visible)
    hidden, new_kv = self.blocks(tokens.astype(jnp.float32), (cache, text_kv), inputs)
    return self._as_velocity(self.head(hidden, e, (gf, gh, gw)), x, t), new_kv

  def _as_velocity(self, out, x, t):
    """The head's output as the velocity: itself, or for config.prediction "x0" the velocity that x0
    implies at t [B, F] (flow.velocity_from_predicted_x0, in float32), in the head's dtype."""
    if self.config.prediction == "velocity":
      return out
    sigma = t / flow.NUM_TRAIN_TIMESTEPS
    return flow.velocity_from_predicted_x0(x.astype(jnp.float32), out.astype(jnp.float32), sigma).astype(out.dtype)

  def _frame_tokens(self, x) -> int:
    _, ph, pw = self.config.patch_size
    return (x.shape[2] // ph) * (x.shape[3] // pw)

  def _check_latents(self, x):
    c = self.config
    if x.ndim != 5 or x.shape[-1] != c.in_dim:
      raise ValueError(f"WanDiT: latents must be [B, F, H, W, {c.in_dim}] (channels last), got {x.shape}")
    for name, size, p in zip(("frames", "height", "width"), x.shape[1:4], c.patch_size):
      if size % p or size == 0:
        raise ValueError(f"WanDiT: latent {name} {size} is not a positive multiple of patch size {p} "
                         f"(patch_size {c.patch_size}, latents {x.shape})")

  def _check_context(self, context):
    if context.ndim != 3 or context.shape[-1] != self.config.text_dim:
      raise ValueError(f"WanDiT: context must be [B, Lt, {self.config.text_dim}], got {context.shape}")

  @staticmethod
  def _check_timesteps(t, b, f):
    t = jnp.asarray(t)
    if t.shape == (b,):
      return jnp.broadcast_to(t[:, None], (b, f))
    if t.shape != (b, f):
      raise ValueError(f"WanDiT: timesteps must be [B, F] = [{b}, {f}] (one per latent frame) or [B], got {t.shape}")
    return t


class PatchEmbedding(nn.Module):
  """Wan's Conv3d with kernel = stride = patch_size, as one matmul over flattened patches."""
  config: WanConfig
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, x):
    c = self.config
    pt, ph, pw = c.patch_size
    fan_in = c.in_dim * pt * ph * pw
    w = self.param("weight", nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform", in_axis=(1, 2, 3, 4),
                                                               out_axis=0),
                   (c.dim, c.in_dim, pt, ph, pw), self.param_dtype)
    b = self.param("bias", nn.initializers.zeros, (c.dim,), self.param_dtype)
    bsz, f, h, wd, ch = x.shape
    p = x.reshape(bsz, f // pt, pt, h // ph, ph, wd // pw, pw, ch)
    # patch vector ordered (channel, pt, ph, pw), matching the Conv3d weight [dim, C, pt, ph, pw].
    p = p.transpose(0, 1, 3, 5, 7, 2, 4, 6).reshape(bsz, f // pt, (h // ph) * (wd // pw), fan_in)
    y = jnp.einsum("bfsk,ok->bfso", p.astype(self.dtype), w.reshape(c.dim, fan_in).astype(self.dtype),
                   preferred_element_type=jnp.float32)
    return (y + b.astype(jnp.float32)).astype(self.dtype)


class TextEmbedding(nn.Module):
  config: WanConfig
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, context):
    init = nn.initializers.normal(0.02)
    h = gelu_tanh(Linear(self.config.dim, self.dtype, self.param_dtype, init, name="0")(context))
    return Linear(self.config.dim, self.dtype, self.param_dtype, init, name="2")(h)


class TimeEmbedding(nn.Module):
  config: WanConfig

  @nn.compact
  def __call__(self, freqs):
    init = nn.initializers.normal(0.02)
    h = nn.silu(Linear(self.config.dim, jnp.float32, jnp.float32, init, name="0")(freqs))
    return Linear(self.config.dim, jnp.float32, jnp.float32, init, name="2")(h)


class TimeProjection(nn.Module):
  config: WanConfig

  @nn.compact
  def __call__(self, e):
    y = Linear(6 * self.config.dim, jnp.float32, jnp.float32, name="1")(nn.silu(e))
    return y.reshape(*e.shape[:-1], 6, self.config.dim)


class Head(nn.Module):
  """Final modulated LayerNorm, Linear to patch pixels, and unpatchify back to [B, F, H, W, out_dim]."""
  config: WanConfig
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, x, e, grid):
    c = self.config
    modulation = self.param(
        "modulation", lambda key, shape: jax.random.normal(key, shape, jnp.float32) / math.sqrt(c.dim),
        (1, 2, c.dim))
    shift, scale = jnp.split(modulation[None] + e[:, :, None], 2, axis=2)  # [B, F, 1, dim] each
    y = (layer_norm(x, c.eps) * (1 + scale) + shift).astype(self.dtype)
    pt, ph, pw = c.patch_size
    y = Linear(pt * ph * pw * c.out_dim, self.dtype, self.param_dtype, nn.initializers.zeros, name="head")(y)
    gf, gh, gw = grid
    b = x.shape[0]
    # Wan's head emits each patch ordered (pt, ph, pw, channel).
    y = y.reshape(b, gf, gh, gw, pt, ph, pw, c.out_dim).transpose(0, 1, 4, 2, 5, 3, 6, 7)
    return y.reshape(b, gf * pt, gh * ph, gw * pw, c.out_dim)


def init_params(config: WanConfig, key, *, param_dtype=jnp.bfloat16, batch: int = 1, text_len: int = 8):
  """Random parameters (Wan's initialisers), for tests and for running without a checkpoint."""
  model = WanDiT(config, dtype=param_dtype, param_dtype=param_dtype, attention_backend="xla")
  pt, ph, pw = config.patch_size
  x = jnp.zeros((batch, pt, ph, pw, config.in_dim), param_dtype)
  ctx = jnp.zeros((batch, text_len, config.text_dim), param_dtype)
  return model.init(key, x, jnp.zeros((batch, pt)), ctx)["params"]


def param_shapes(config: WanConfig, param_dtype=jnp.bfloat16) -> Any:
  """The parameter tree as ShapeDtypeStructs, without allocating it."""
  return jax.eval_shape(lambda k: init_params(config, k, param_dtype=param_dtype), jax.random.key(0))

