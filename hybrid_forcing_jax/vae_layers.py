"""Channels-last layers of the Wan2.1 VAE, as pure functions over Wan-named parameters.

Parameters come in Wan's PyTorch layouts, as the converter stores them (a conv is [O, I, kt, kh, kw],
a norm's gamma [C, 1, 1, 1]); each layer rearranges its kernel to channels-last inside the traced
function, which costs a few microseconds of weight transposes per call and keeps one parameter tree
for checkpoints and compute. Videos are [B, T, H, W, C].

Every causal temporal convolution carries an explicit cache: the last CACHE_T frames of its input
stream, zeros before the video starts. A chunk processed with the cache of the previous chunk gives
exactly what processing both chunks at once gives, which is Wan's own frame-by-frame `feat_cache`
(its `cache_x` with a 1-frame chunk prepends the previous last frame; that is the same 2-frame
window of the stream). `cache=None` means "the video starts here".
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

CACHE_T = 2  # frames a causal conv with a 3-frame kernel needs from before the chunk
Dtype = Any


@dataclasses.dataclass(frozen=True)
class VaeOptions:
  """Run-time choices (not architecture); hashable so it is a static jit argument.

  conv_impl: how a 3x3x3 causal conv reaches cuDNN. '3d': one 3D convolution. 'fold_in': the 3
    temporal taps stacked into input channels, one 2D conv with 3C inputs. 'fold_out': one 2D conv
    with 3*O outputs (one per tap), summed with a 1- and 2-frame shift. They compute the same
    function; which is fastest depends on the stage's shape (see benchmarks/bench_vae.py). A
    per-width choice is written '96:fold_out,192:3d' (input channels: impl; others use '3d').
  upsample_impl: nearest-2x upsample + 3x3 conv as 'repeat' (materialise the 4x larger input) or
    'subpixel' (one 3x3 conv on the small input with 4*O outputs, then depth-to-space: the same
    function, without writing and re-reading the upsampled tensor).
  tail_by_frame: the decoder's layers after its last temporal upsampling (the two widest resolutions and the
    head, at 4 video frames a latent frame) run one video frame at a time under a scan, their causal cache
    carried: the same frames, with one video frame of those layers' activations alive at a time instead of four
    (XLA's CPU estimate of a full-size one-latent-frame decode's temporaries: 5.01 -> 3.79 GiB).
  """
  dtype: Dtype = jnp.bfloat16
  conv_impl: str = "fold_in"
  upsample_impl: str = "subpixel"
  tail_by_frame: bool = False

  def __post_init__(self):
    object.__setattr__(self, "dtype", jnp.dtype(self.dtype))
    self.conv_impl_for(0)  # validates
    if self.upsample_impl not in ("repeat", "subpixel"):
      raise ValueError(f"upsample_impl must be 'repeat' or 'subpixel', got {self.upsample_impl!r}")

  def conv_impl_for(self, channels: int) -> str:
    impls = ("3d", "fold_in", "fold_out")
    if self.conv_impl in impls:
      return self.conv_impl
    try:
      table = {int(c): impl for c, impl in (item.split(":") for item in self.conv_impl.split(","))}
    except ValueError:
      table = None
    if not table or any(impl not in impls for impl in table.values()):
      raise ValueError(f"conv_impl must be one of {impls} or 'C:impl,...' (e.g. '96:fold_out,192:3d'), "
                       f"got {self.conv_impl!r}")
    return table.get(channels, "3d")

  @property
  def precision(self):
    # float32 on request means float32 (no TF32 on GPU); bf16 uses the tensor cores' native path.
    return lax.Precision.HIGHEST if self.dtype == jnp.float32 else None


def _conv(x, k, strides, padding, opt: VaeOptions):
  nd = x.ndim - 2
  spec = ("NDHWC", "DHWIO", "NDHWC") if nd == 3 else ("NHWC", "HWIO", "NHWC")
  return lax.conv_general_dilated(x, k.astype(opt.dtype), strides, padding, dimension_numbers=spec,
                                  precision=opt.precision)


def _bias(y, p, opt):
  return y + p["bias"].astype(opt.dtype)


def pointwise(p, x, opt: VaeOptions):
  """A 1x1(x1) convolution: a matmul over channels."""
  w = p["weight"].reshape(p["weight"].shape[:2]).astype(opt.dtype)
  y = jnp.einsum("...c,oc->...o", x.astype(opt.dtype), w, precision=opt.precision)
  return _bias(y, p, opt)


def _conv3_valid_time(xp, w, opt: VaeOptions):
  """Convolution valid in time (xp carries kt-1 leading frames) and 'same' in space."""
  kt, kh, kw = w.shape[2:]
  b, tp, h, wd, c = xp.shape
  o, t = w.shape[0], tp - kt + 1
  pad = [(kh // 2, kh // 2), (kw // 2, kw // 2)]
  k = jnp.transpose(w, (2, 3, 4, 1, 0))  # [kt, kh, kw, I, O]
  impl = opt.conv_impl_for(c)
  if impl == "3d" or kh == 1:
    return _conv(xp, k, (1, 1, 1), [(0, 0)] + pad, opt)
  if impl == "fold_in":
    xs = jnp.concatenate([xp[:, i:i + t] for i in range(kt)], axis=-1).reshape(b * t, h, wd, kt * c)
    k2 = jnp.transpose(k, (1, 2, 0, 3, 4)).reshape(kh, kw, kt * c, o)  # input channel = tap * C + c
    return _conv(xs, k2, (1, 1), pad, opt).reshape(b, t, h, wd, o)
  k2 = jnp.transpose(k, (1, 2, 3, 0, 4)).reshape(kh, kw, c, kt * o)  # output channel = tap * O + o
  y = _conv(xp.reshape(b * tp, h, wd, c), k2, (1, 1), pad, opt).reshape(b, tp, h, wd, kt, o)
  return sum(y[:, i:i + t, :, :, i] for i in range(kt))


def causal_conv3d(p, x, cache, opt: VaeOptions):
  """Wan's CausalConv3d with a 3-frame kernel: (y, new cache = last CACHE_T input frames)."""
  kt = p["weight"].shape[2]
  assert kt == CACHE_T + 1, "every temporal kernel in the Wan2.1 VAE spans 3 frames"
  x = x.astype(opt.dtype)
  if cache is None:
    cache = jnp.zeros(x.shape[:1] + (CACHE_T,) + x.shape[2:], opt.dtype)
  xp = jnp.concatenate([cache.astype(opt.dtype), x], axis=1)
  return _bias(_conv3_valid_time(xp, p["weight"], opt), p, opt), xp[:, -CACHE_T:]


def rms_norm(gamma, x, opt: VaeOptions):
  """Wan's RMS_norm: F.normalize over channels (eps 1e-12) * sqrt(C) * gamma, statistics in float32."""
  c = x.shape[-1]
  xf = x.astype(jnp.float32)
  n = xf * lax.rsqrt(jnp.maximum(jnp.sum(xf * xf, axis=-1, keepdims=True), 1e-24))
  return (n * (math.sqrt(c) * gamma.reshape(c).astype(jnp.float32))).astype(opt.dtype)


def residual_block(p, x, cache, name: str, new_cache: dict, opt: VaeOptions):
  """Wan's ResidualBlock: residual = [norm, silu, conv, norm, silu, dropout, conv] (+ 1x1 shortcut)."""
  r = p["residual"]
  h = pointwise(p["shortcut"], x, opt) if "shortcut" in p else x.astype(opt.dtype)
  y = jax.nn.silu(rms_norm(r["0"]["gamma"], x, opt))
  y, new_cache[f"{name}.residual.2"] = causal_conv3d(r["2"], y, _get(cache, f"{name}.residual.2"), opt)
  y = jax.nn.silu(rms_norm(r["3"]["gamma"], y, opt))
  y, new_cache[f"{name}.residual.6"] = causal_conv3d(r["6"], y, _get(cache, f"{name}.residual.6"), opt)
  return y + h


def attention_block(p, x, opt: VaeOptions):
  """Wan's AttentionBlock: single-head self-attention over each frame's pixels (no temporal mixing)."""
  b, t, h, w, c = x.shape
  y = rms_norm(p["norm"]["gamma"], x, opt).reshape(b * t, h * w, c)
  q, k, v = jnp.split(pointwise(p["to_qkv"], y, opt), 3, axis=-1)
  logits = jnp.einsum("bqc,bkc->bqk", q, k, preferred_element_type=jnp.float32, precision=opt.precision)
  probs = jax.nn.softmax(logits / math.sqrt(c), axis=-1).astype(opt.dtype)
  o = jnp.einsum("bqk,bkc->bqc", probs, v, precision=opt.precision)
  return x.astype(opt.dtype) + pointwise(p["proj"], o, opt).reshape(b, t, h, w, c)


# Nearest-2x upsampling then a 3x3 conv (padding 1) equals, for each output parity p in {0, 1}, a
# 3-tap conv on the small input whose taps are sums of the original ones: output row 2i reads
# upsampled rows 2i-1, 2i, 2i+1 = input rows i-1, i, i; output row 2i+1 reads input rows i, i, i+1.
# _SUBPIXEL[p, e, d] = 1 where original tap d lands on input tap e (rows i-1, i, i+1) for parity p.
# A NumPy constant: a jnp array here would start the accelerator (and take its memory) at import.
_SUBPIXEL = np.array([[[1, 0, 0], [0, 1, 1], [0, 0, 0]],
                       [[0, 0, 0], [1, 1, 0], [0, 0, 1]]], np.float32)


def upsample2d(p, x, opt: VaeOptions):
  """Resample 'upsample2d': nearest(-exact, identical at 2x) 2x upsample + Conv2d 3x3, per frame."""
  b, t, h, w, _ = x.shape
  x = x.astype(opt.dtype).reshape(b * t, h, w, -1)
  k = jnp.transpose(p["weight"], (2, 3, 1, 0)).astype(jnp.float32)  # [3, 3, I, O]
  if opt.upsample_impl == "repeat":
    u = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    y = _conv(u, k, (1, 1), [(1, 1), (1, 1)], opt)
  else:
    ks = jnp.einsum("ped,qfg,dgio->efipqo", _SUBPIXEL, _SUBPIXEL, k, precision=lax.Precision.HIGHEST)
    o = k.shape[-1]
    y = _conv(x, ks.reshape(3, 3, k.shape[2], 4 * o), (1, 1), [(1, 1), (1, 1)], opt)
    y = y.reshape(b * t, h, w, 2, 2, o).transpose(0, 1, 3, 2, 4, 5)
  return _bias(y.reshape(b, t, 2 * h, 2 * w, -1), p, opt)


def upsample3d(p, x, cache, name: str, new_cache: dict, opt: VaeOptions):
  """Resample 'upsample3d': a causal (3,1,1) conv doubling the channels, interleaved into 2x frames.

  Wan's 'Rep' marker: the video's very first frame skips the time conv (it stays one frame) and is
  not part of the time conv's stream; every later frame becomes two. So a first chunk of n frames
  gives 1 + 2(n-1), a later chunk 2n.
  """
  key = f"{name}.time_conv"
  if cache is None:  # the video starts here
    head, rest = x[:, :1].astype(opt.dtype), x[:, 1:]
    if rest.shape[1]:
      tc, new_cache[key] = causal_conv3d(p["time_conv"], rest, None, opt)
      x = jnp.concatenate([head, _interleave_time(tc)], axis=1)
    else:
      x, new_cache[key] = head, jnp.zeros(head.shape[:1] + (CACHE_T,) + head.shape[2:], opt.dtype)
  else:
    tc, new_cache[key] = causal_conv3d(p["time_conv"], x, cache[key], opt)
    x = _interleave_time(tc)
  return upsample2d(p["resample"]["1"], x, opt)


def _interleave_time(y):
  """[B, T, H, W, 2C] -> [B, 2T, H, W, C]: channel block i becomes frame 2t + i (Wan's reshape)."""
  b, t, h, w, c2 = y.shape
  y = y.reshape(b, t, h, w, 2, c2 // 2).transpose(0, 1, 4, 2, 3, 5)
  return y.reshape(b, 2 * t, h, w, c2 // 2)


def downsample2d(p, x, opt: VaeOptions):
  """Resample 'downsample2d': ZeroPad2d((0, 1, 0, 1)) then Conv2d 3x3 stride 2, per frame."""
  b, t, h, w, c = x.shape
  k = jnp.transpose(p["weight"], (2, 3, 1, 0))
  y = _conv(x.astype(opt.dtype).reshape(b * t, h, w, c), k, (2, 2), [(0, 1), (0, 1)], opt)
  return _bias(y.reshape(b, t, *y.shape[1:]), p, opt)


def downsample3d(p, x, cache, name: str, new_cache: dict, opt: VaeOptions):
  """Resample 'downsample3d': downsample2d, then a (3,1,1) conv with temporal stride 2.

  The first frame of the video passes unchanged; later frames go through the strided conv whose
  window starts at the frame before the chunk (the 1-frame cache): windows (0,1,2), (2,3,4), ...
  """
  key = f"{name}.time_conv"
  x = downsample2d(p["resample"]["1"], x, opt)
  tc = p["time_conv"]
  k = jnp.transpose(tc["weight"], (2, 3, 4, 1, 0))
  if cache is None:
    head, stream = x[:, :1], x
  else:
    head, stream = x[:, :0], jnp.concatenate([cache[key].astype(opt.dtype), x], axis=1)
  new_cache[key] = x[:, -1:]
  if stream.shape[1] < 3:
    return head
  y = _bias(_conv(stream, k, (2, 1, 1), [(0, 0), (0, 0), (0, 0)], opt), tc, opt)
  return jnp.concatenate([head, y], axis=1)


def _get(cache, key):
  return None if cache is None else cache[key]
