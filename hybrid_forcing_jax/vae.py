"""The Wan2.1 VAE in JAX: encoder (video -> normalised latents) and streaming decoder.

Parameters carry Wan's original `Wan2.1_VAE.pth` names (`decoder.upsamples.4.residual.2.weight`) and
PyTorch layouts, unstacked (the blocks differ in shape). The model is pure functions over that tree;
`WanVAE` binds a config and run-time options and jits them.

Streaming: `decode_chunk(params, z, cache)` returns `(frames, new_cache)`, the cache an explicit
dict {causal conv name: its last 2 input frames}. `cache=None` starts a video: 3 latent frames give
9 frames (Wan's first latent frame decodes to 1 frame), every later chunk of 3 gives 12, and the
cache has the same shapes after every chunk, so one jitted step serves all later chunks. A whole
video decodes through the same function with `cache=None`; chunked and whole decodes are equal.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from hybrid_forcing_jax import vae_layers as L
from hybrid_forcing_jax.config_io import JsonConfig
from hybrid_forcing_jax.param_tree import unflatten
from hybrid_forcing_jax.vae_layers import VaeOptions
from hybrid_forcing_jax.video_shapes import check_latents, check_video, decode_streaming

# Per-channel statistics of Wan2.1's latents (wan/modules/vae.py, WanVAE.__init__).
LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
               3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


@dataclasses.dataclass(frozen=True)
class VaeConfig(JsonConfig):
  """Architecture of the Wan2.1 VAE (`_video_vae`); defaults are the released model."""
  z_dim: int = 16
  base_dim: int = 96
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  temporal_downsample: tuple[bool, ...] = (False, True, True)
  latents_mean: tuple[float, ...] = LATENTS_MEAN
  latents_std: tuple[float, ...] = LATENTS_STD

  def __post_init__(self):
    for f in ("dim_mult", "temporal_downsample", "latents_mean", "latents_std"):
      object.__setattr__(self, f, tuple(getattr(self, f)))
    if len(self.temporal_downsample) != len(self.dim_mult) - 1:
      raise ValueError(f"VaeConfig: temporal_downsample needs {len(self.dim_mult) - 1} entries "
                       f"(one per downsampling level), got {self.temporal_downsample}")
    if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
      raise ValueError(f"VaeConfig: latents_mean/std need z_dim={self.z_dim} values each")

  @property
  def temporal_factor(self) -> int:
    return 2 ** sum(self.temporal_downsample)

  @property
  def spatial_factor(self) -> int:
    return 2 ** (len(self.dim_mult) - 1)


WAN21_VAE = VaeConfig()


def tiny_vae_config(**overrides) -> VaeConfig:
  """Wan's structure (levels, temporal pattern, shortcut positions, z_dim 16) at base dim 8."""
  return VaeConfig(**{"base_dim": 8, **overrides})


# ---------------------------------------------------------------------------------------------
# Structure: the layers of Wan's `downsamples` / `upsamples` Sequentials, by index.

def encoder_layout(c: VaeConfig) -> list[tuple]:
  """[(index, 'res', in, out) | (index, 'down2d'|'down3d', dim)] of `encoder.downsamples`."""
  dims = [c.base_dim * m for m in (1,) + c.dim_mult]
  out, i = [], 0
  for level, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
    for _ in range(c.num_res_blocks):
      out.append((i, "res", d_in, d_out))
      d_in, i = d_out, i + 1
    if level != len(c.dim_mult) - 1:
      out.append((i, "down3d" if c.temporal_downsample[level] else "down2d", d_out))
      i += 1
  return out


def decoder_layout(c: VaeConfig) -> list[tuple]:
  """[(index, 'res', in, out) | (index, 'up2d'|'up3d', dim)] of `decoder.upsamples`.

  An upsampling Resample's 2D conv halves the channels, so every level after the first starts
  from half its predecessor's width.
  """
  dims = [c.base_dim * m for m in (c.dim_mult[-1],) + c.dim_mult[::-1]]
  temporal_upsample = c.temporal_downsample[::-1]
  out, i = [], 0
  for level, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
    if level > 0:
      d_in //= 2
    for _ in range(c.num_res_blocks + 1):
      out.append((i, "res", d_in, d_out))
      d_in, i = d_out, i + 1
    if level != len(c.dim_mult) - 1:
      out.append((i, "up3d" if temporal_upsample[level] else "up2d", d_out))
      i += 1
  return out


def _mid_dim(c: VaeConfig) -> int:
  return c.base_dim * c.dim_mult[-1]


# ---------------------------------------------------------------------------------------------
# Parameters (canonical = Wan's names and PyTorch layouts).

def _param_spec(c: VaeConfig) -> dict[str, tuple[int, ...]]:
  spec: dict[str, tuple[int, ...]] = {}

  def conv(name, o, i, *k):
    spec[f"{name}.weight"], spec[f"{name}.bias"] = (o, i, *k), (o,)

  def res(name, i, o):
    spec[f"{name}.residual.0.gamma"] = (i, 1, 1, 1)
    conv(f"{name}.residual.2", o, i, 3, 3, 3)
    spec[f"{name}.residual.3.gamma"] = (o, 1, 1, 1)
    conv(f"{name}.residual.6", o, o, 3, 3, 3)
    if i != o:
      conv(f"{name}.shortcut", o, i, 1, 1, 1)

  def middle(name, d):
    res(f"{name}.0", d, d)
    spec[f"{name}.1.norm.gamma"] = (d, 1, 1)
    conv(f"{name}.1.to_qkv", 3 * d, d, 1, 1)
    conv(f"{name}.1.proj", d, d, 1, 1)
    res(f"{name}.2", d, d)

  mid = _mid_dim(c)
  conv("encoder.conv1", c.base_dim, 3, 3, 3, 3)
  for i, kind, *dims in encoder_layout(c):
    name = f"encoder.downsamples.{i}"
    if kind == "res":
      res(name, *dims)
    else:
      conv(f"{name}.resample.1", dims[0], dims[0], 3, 3)
      if kind == "down3d":
        conv(f"{name}.time_conv", dims[0], dims[0], 3, 1, 1)
  middle("encoder.middle", mid)
  spec["encoder.head.0.gamma"] = (mid, 1, 1, 1)
  conv("encoder.head.2", 2 * c.z_dim, mid, 3, 3, 3)
  conv("conv1", 2 * c.z_dim, 2 * c.z_dim, 1, 1, 1)
  conv("conv2", c.z_dim, c.z_dim, 1, 1, 1)
  conv("decoder.conv1", mid, c.z_dim, 3, 3, 3)
  middle("decoder.middle", mid)
  for i, kind, *dims in decoder_layout(c):
    name = f"decoder.upsamples.{i}"
    if kind == "res":
      res(name, *dims)
    else:
      conv(f"{name}.resample.1", dims[0] // 2, dims[0], 3, 3)
      if kind == "up3d":
        conv(f"{name}.time_conv", 2 * dims[0], dims[0], 3, 1, 1)
  spec["decoder.head.0.gamma"] = (c.base_dim, 1, 1, 1)
  conv("decoder.head.2", 3, c.base_dim, 3, 3, 3)
  return spec


def _storage_dtype(name: str, param_dtype):
  # Conv weights in the storage dtype; the small norm scales and biases stay float32.
  return jnp.dtype(param_dtype) if name.endswith(".weight") else jnp.dtype(jnp.float32)


def param_shapes(config: VaeConfig, param_dtype=jnp.bfloat16) -> dict:
  return unflatten({n: jax.ShapeDtypeStruct(s, _storage_dtype(n, param_dtype))
                    for n, s in _param_spec(config).items()})


def init_params(config: VaeConfig, seed: int = 0, param_dtype=jnp.bfloat16) -> dict:
  """Random parameters on the host (fan-in scaled), for tests and benchmarks without a checkpoint."""
  rng = np.random.default_rng(seed)
  flat = {}
  for name, shape in _param_spec(config).items():
    if name.endswith(".gamma"):
      v = 1.0 + 0.1 * rng.standard_normal(shape)
    elif name.endswith(".bias"):
      v = 0.02 * rng.standard_normal(shape)
    else:
      v = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
    flat[name] = jnp.asarray(v, _storage_dtype(name, param_dtype))
  return unflatten(flat)



# ---------------------------------------------------------------------------------------------
# The model: one chunk, with the cache passed in and returned.

def _middle(p, x, cache, name, new, opt):
  x = L.residual_block(p["0"], x, cache, f"{name}.0", new, opt)
  x = L.attention_block(p["1"], x, opt)
  return L.residual_block(p["2"], x, cache, f"{name}.2", new, opt)


def _levels(blocks, x, cache, new, entries, prefix, opt, resample3d, resample2d):
  """The (index, kind, ...) entries of a decoder_layout / encoder_layout: residual blocks and resamples."""
  for i, kind, *_ in entries:
    p, name = blocks[str(i)], f"{prefix}.{i}"
    if kind == "res":
      x = L.residual_block(p, x, cache, name, new, opt)
    elif kind.endswith("3d"):
      x = resample3d(p, x, cache, name, new, opt)
    else:
      x = resample2d(p["resample"]["1"], x, opt)
  return x


def _head(p, x, cache, name, new, opt):
  x = jax.nn.silu(L.rms_norm(p["0"]["gamma"], x, opt))
  x, new[f"{name}.2"] = L.causal_conv3d(p["2"], x, L._get(cache, f"{name}.2"), opt)
  return x


def decode_chunk(params, z, cache, config: VaeConfig, opt: VaeOptions):
  """Normalised latents [B, T, h, w, z_dim] -> (frames [B, T', 8h, 8w, 3] in [-1, 1], new cache).

  cache=None starts a video (T' = 1 + 4(T-1)); otherwise T' = 4T.
  """
  new: dict[str, jax.Array] = {}
  mean = jnp.asarray(config.latents_mean, jnp.float32)
  std = jnp.asarray(config.latents_std, jnp.float32)
  x = L.pointwise(params["conv2"], z.astype(jnp.float32) * std + mean, opt)
  d = params["decoder"]
  x, new["decoder.conv1"] = L.causal_conv3d(d["conv1"], x, L._get(cache, "decoder.conv1"), opt)
  x = _middle(d["middle"], x, cache, "decoder.middle", new, opt)
  layout = decoder_layout(config)
  last_up3d = max(n for n, (_, kind, *_) in enumerate(layout) if kind == "up3d")

  def layers(x, cache, new, entries):
    return _levels(d["upsamples"], x, cache, new, entries, "decoder.upsamples", opt, L.upsample3d, L.upsample2d)

  def tail(x, cache):   # -> (frames, the tail's new cache)
    tail_new = {}
    x = layers(x, cache, tail_new, layout[last_up3d + 1:])
    return _head(d["head"], x, cache, "decoder.head", tail_new, opt), tail_new

  x = layers(x, cache, new, layout[:last_up3d + 1])
  if not opt.tail_by_frame:
    x, tail_new = tail(x, cache)
  else:
    # The tail's cache entries, as one frame leaves them; a causal conv's absent cache is zeros.
    shapes = jax.eval_shape(lambda f: tail(f, None)[1], x[:, :1])
    tail_cache = {k: jnp.zeros(v.shape, v.dtype) if cache is None else cache[k] for k, v in shapes.items()}

    def step(c, frame):
      y, c = tail(frame[:, None], c)
      return c, y[:, 0]
    tail_new, frames = jax.lax.scan(step, tail_cache, jnp.moveaxis(x, 1, 0))
    x = jnp.moveaxis(frames, 0, 1)
  new.update(tail_new)
  return jnp.clip(x, -1.0, 1.0), new


def encode_chunk(params, video, cache, config: VaeConfig, opt: VaeOptions):
  """Video [B, T, H, W, 3] in [-1, 1] -> (normalised latent means [B, T', H/8, W/8, z_dim] float32,
  new cache). cache=None starts a video (T = 1 + 4k -> 1 + k); otherwise T = 4k -> k."""
  new: dict[str, jax.Array] = {}
  e = params["encoder"]
  x, new["encoder.conv1"] = L.causal_conv3d(e["conv1"], video, L._get(cache, "encoder.conv1"), opt)
  x = _levels(e["downsamples"], x, cache, new, encoder_layout(config), "encoder.downsamples", opt, L.downsample3d,
              L.downsample2d)
  x = _middle(e["middle"], x, cache, "encoder.middle", new, opt)
  x = _head(e["head"], x, cache, "encoder.head", new, opt)
  # The quant conv (`conv1`) in float32: it is tiny, and the latents feed training targets.
  mu = L.pointwise(params["conv1"], x.astype(jnp.float32), dataclasses.replace(opt, dtype=jnp.float32))
  mu = mu[..., :config.z_dim]
  mean = jnp.asarray(config.latents_mean, jnp.float32)
  return (mu - mean) * (1.0 / jnp.asarray(config.latents_std, jnp.float32)), new


# ---------------------------------------------------------------------------------------------
# The user-facing object: checks inputs (clear errors outside the trace) and jits.

class WanVAE:
  """The Wan2.1 VAE bound to a config and run-time options (bf16 by default, float32 on request).

    vae = WanVAE(config)                       # config, params = load_checkpoint(folder, "wan_vae")
    latents = vae.encode(params, video)        # [B, 1+4k, H, W, 3] -> [B, 1+k, H/8, W/8, 16]
    frames = vae.decode(params, latents)       # whole video
    frames, cache = vae.decode_chunk(params, latents[:, :3])          # 9 frames
    frames, cache = vae.decode_chunk(params, latents[:, 3:6], cache)  # 12 frames, and so on
  """

  # conv_impl 'fold_in' measured fastest on an H100 (117 ms per steady chunk against 143 ms for
  # plain 3D convolutions; docs/benchmarks.md).
  # decode_frames_per_call: decode_chunk decodes at most that many latent frames per call (None: the whole
  # chunk in one). The causal cache makes pieces exact; fewer frames per call divide the decode's
  # activations (issue 14's peak-memory goal), one dispatch per piece.
  # tail_by_frame: VaeOptions.tail_by_frame, the full-resolution layers one video frame at a time; None: with
  # decode_frames_per_call (the small-memory setting). Full size, one latent frame a call, XLA's CPU estimate of
  # the decode's temporaries: 5.01 -> 3.79 GiB (the GPU's, and its time, in docs/benchmarks.md when measured).
  def __init__(self, config: VaeConfig = WAN21_VAE, *, dtype=jnp.bfloat16, conv_impl: str = "fold_in",
               upsample_impl: str = "subpixel", decode_frames_per_call: int | None = None,
               tail_by_frame: bool | None = None):
    if decode_frames_per_call is not None and decode_frames_per_call < 1:
      raise ValueError(f"WanVAE: decode_frames_per_call must be >= 1 or None, got {decode_frames_per_call}")
    self.config = config
    self.decode_frames_per_call = decode_frames_per_call
    if tail_by_frame is None:
      tail_by_frame = decode_frames_per_call is not None
    self.options = VaeOptions(dtype=dtype, conv_impl=conv_impl, upsample_impl=upsample_impl,
                              tail_by_frame=tail_by_frame)
    # Donating the cache lets XLA write the new cache over the old one; the CPU backend ignores
    # donation (with a warning), so only donate where it works.
    donate = (2,) if jax.default_backend() != "cpu" else ()
    self._decode_first = jax.jit(functools.partial(decode_chunk, cache=None, config=config, opt=self.options))
    self._decode_next = jax.jit(functools.partial(_positional(decode_chunk), config=config, opt=self.options),
                                donate_argnums=donate)
    self._encode_first = jax.jit(functools.partial(encode_chunk, cache=None, config=config, opt=self.options))
    self._encode_next = jax.jit(functools.partial(_positional(encode_chunk), config=config, opt=self.options),
                                donate_argnums=donate)

  # -- decoding
  def decode_chunk(self, params, z, cache=None):
    """(frames, new cache); cache=None starts a video. The cache passed in is consumed (donated)."""
    pieces = list(self.decode_pieces(params, z, cache))
    frames = [f for f, _ in pieces]
    return (frames[0] if len(frames) == 1 else jnp.concatenate(frames, axis=1)), pieces[-1][1]

  def decode_pieces(self, params, z, cache=None):
    """decode_chunk a piece at a time: yields (frames, cache after them) per `decode_frames_per_call` latent
    frames (the whole chunk when None). Lazy: each piece is queued when asked for, so a caller can take a
    piece's frames to the host before the next piece is queued (the pipeline's first frame)."""
    self._check_latents(z)
    step = self.decode_frames_per_call or z.shape[1]
    for start in range(0, z.shape[1], step):
      piece = z[:, start:start + step]
      frames, cache = self._decode_first(params, piece) if cache is None else self._decode_next(params, piece, cache)
      yield frames, cache

  def decode(self, params, z, chunk: int | None = None):
    """A whole latent video [B, T, h, w, z_dim] -> [B, 1 + 4(T-1), 8h, 8w, 3] in [-1, 1].

    chunk: latent frames per call (the result is the same). By default one call when the largest
    activation stays under cuDNN's 32-bit index limit, else streamed chunks of 3.
    """
    self._check_latents(z)
    b, t, h, w, _ = z.shape
    sf, tf = self.config.spatial_factor, self.config.temporal_factor
    if chunk is None:
      chunk = t if self._fits(b * (1 + tf * (t - 1) + L.CACHE_T) * sf * h * sf * w) else 3
    if chunk >= t:
      return self.decode_chunk(params, z)[0]
    return self.decode_streaming(params, z, chunk)

  def decode_streaming(self, params, z, chunk: int = 3):
    """Decode chunk by chunk (as a streaming generator would); equals `decode`."""
    return decode_streaming(self, params, z, chunk, jnp.concatenate)

  # -- encoding
  def encode_chunk(self, params, video, cache=None):
    """(normalised latents, new cache): a first chunk has 1 + 4k frames, later ones 4k."""
    self._check_video(video, first=cache is None)
    if cache is None:
      return self._encode_first(params, video)
    return self._encode_next(params, video, cache)

  def encode(self, params, video, chunk_frames: int | None = None):
    """[B, 1 + 4k, H, W, 3] in [-1, 1] -> normalised latents [B, 1 + k, H/8, W/8, z_dim] (float32).

    chunk_frames (a multiple of 4): encode the first frame, then that many frames at a time, to
    bound activation memory for long videos; the result is the same. By default the whole video
    in one call if its activations stay under cuDNN's 32-bit index limit, else the largest
    multiple of 4 that does.
    """
    self._check_video(video, first=True)
    b, t, h, w, _ = video.shape
    tf = self.config.temporal_factor
    if chunk_frames is None:
      if self._fits(b * (t + L.CACHE_T) * h * w):
        return self.encode_chunk(params, video)[0]
      chunk_frames = tf
      while self._fits(b * (chunk_frames + tf + L.CACHE_T) * h * w):
        chunk_frames += tf
    if chunk_frames <= 0 or chunk_frames % tf:
      raise ValueError(f"chunk_frames must be a positive multiple of {tf}, got {chunk_frames}")
    outs, cache = [], None
    starts = [0, 1] + list(range(1 + chunk_frames, video.shape[1], chunk_frames))
    for a, b in zip(starts, starts[1:] + [video.shape[1]]):
      if a < b:
        out, cache = self.encode_chunk(params, video[:, a:b], cache)
        outs.append(out)
    return jnp.concatenate(outs, axis=1)

  def _fits(self, pixels: int) -> bool:
    """Whether a full-resolution activation of this many pixels (x3 for the 'fold_in' conv layout's
    stacked taps) stays under cuDNN's 32-bit element indexing. Past it, XLA's convolutions take a
    very slow path: on an H100 a 21-latent-frame 832x480 decode in one call took 101 s, against
    0.96 s as 7 streamed chunks."""
    return pixels * self.config.base_dim * 3 < 2**31

  # -- input checks
  def _check_latents(self, z):
    check_latents(z, self.config.z_dim, "VAE")

  def _check_video(self, video, first: bool):
    check_video(video, self.config.temporal_factor, self.config.spatial_factor, first, "VAE")


def _positional(fn):
  """fn(params, x, cache, config=, opt=) with the cache positional, so it can be donated."""
  def wrapped(params, x, cache, *, config, opt):
    return fn(params, x, cache, config, opt)
  return wrapped
