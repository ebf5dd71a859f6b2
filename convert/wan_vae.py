"""Wan2.1 VAE checkpoints -> the project's checkpoint folder (model kind `wan_vae`).

Formats:
  * `wan`: Wan's original `Wan2.1_VAE.pth` (a plain state dict; also accepted as .safetensors). The
    canonical names are Wan's, so this table is the identity (with `*` for block indices).
  * `diffusers`: `AutoencoderKLWan` (`vae/diffusion_pytorch_model.safetensors`). diffusers groups
    the decoder's flat `upsamples.N` into `up_blocks.L.resnets.J` / `up_blocks.L.upsamplers.0`, so
    its table is generated for the checkpoint's level and block counts, read from its key names.

The architecture (base dim, multipliers, blocks per level, temporal downsampling) is inferred from
the Wan-named shapes; every tensor must be consumed and every parameter present with its shape.
"""
from __future__ import annotations

import jax.numpy as jnp

from convert.engine import Rule, Table, canonical_names, rules, stack
from convert.sources import TensorSource, open_source
from hybrid_forcing_jax.checkpoint import flatten, save_checkpoint
from hybrid_forcing_jax.vae import LATENTS_MEAN, VaeConfig, param_shapes

_W, _G = ("weight", "bias"), ("gamma",)


def _residual(src: str, dst: str, diffusers: bool) -> tuple[Rule, ...]:
  """One ResidualBlock's rules; Wan's `residual` Sequential is diffusers' norm1/conv1/norm2/conv2."""
  if not diffusers:
    return (rules((f"{src}.residual.2",) * 2, (f"{src}.residual.6",) * 2, (f"{src}.shortcut",) * 2)
            + rules((f"{src}.residual.0",) * 2, (f"{src}.residual.3",) * 2, params=_G))
  return (rules((f"{src}.conv1", f"{dst}.residual.2"), (f"{src}.conv2", f"{dst}.residual.6"),
                (f"{src}.conv_shortcut", f"{dst}.shortcut"))
          + rules((f"{src}.norm1", f"{dst}.residual.0"), (f"{src}.norm2", f"{dst}.residual.3"), params=_G))


def _middle(src: str, dst: str, diffusers: bool) -> tuple[Rule, ...]:
  if not diffusers:
    return (_residual(f"{src}.*", f"{src}.*", False) + rules((f"{src}.*.to_qkv",) * 2, (f"{src}.*.proj",) * 2)
            + rules((f"{src}.*.norm",) * 2, params=_G))
  attn = f"{src}.attentions.0"
  return (_residual(f"{src}.resnets.0", f"{dst}.0", True) + _residual(f"{src}.resnets.1", f"{dst}.2", True)
          + rules((f"{attn}.to_qkv", f"{dst}.1.to_qkv"), (f"{attn}.proj", f"{dst}.1.proj"))
          + rules((f"{attn}.norm", f"{dst}.1.norm"), params=_G))


WAN_TABLE = Table("wan", tuple(
    rules(("conv1",) * 2, ("conv2",) * 2, ("encoder.conv1",) * 2, ("decoder.conv1",) * 2,
          ("encoder.head.2",) * 2, ("decoder.head.2",) * 2,
          *[(f"{part}.*.{m}",) * 2 for part in ("encoder.downsamples", "decoder.upsamples")
            for m in ("resample.1", "time_conv")])
    + rules(("encoder.head.0",) * 2, ("decoder.head.0",) * 2, params=_G)
    + _residual("encoder.downsamples.*", "", False) + _residual("decoder.upsamples.*", "", False)
    + _middle("encoder.middle", "", False) + _middle("decoder.middle", "", False)))


def diffusers_table(num_levels: int, num_res_blocks: int) -> Table:
  """diffusers -> Wan names for a VAE with this many levels and residual blocks per level."""
  out = rules(("quant_conv", "conv1"), ("post_quant_conv", "conv2"),
              ("encoder.conv_in", "encoder.conv1"), ("decoder.conv_in", "decoder.conv1"),
              ("encoder.conv_out", "encoder.head.2"), ("decoder.conv_out", "decoder.head.2"),
              ("encoder.down_blocks.*.resample.1", "encoder.downsamples.*.resample.1"),
              ("encoder.down_blocks.*.time_conv", "encoder.downsamples.*.time_conv"))
  out += rules(("encoder.norm_out", "encoder.head.0"), ("decoder.norm_out", "decoder.head.0"), params=_G)
  # The encoder's down_blocks keep Wan's flat indices.
  out += _residual("encoder.down_blocks.*", "encoder.downsamples.*", True)
  out += _middle("encoder.mid_block", "encoder.middle", True) + _middle("decoder.mid_block", "decoder.middle", True)
  # Decoder level L holds num_res_blocks + 1 residual blocks, then (except the last) one Resample.
  per_level = num_res_blocks + 2
  for level in range(num_levels):
    for j in range(num_res_blocks + 1):
      out += _residual(f"decoder.up_blocks.{level}.resnets.{j}", f"decoder.upsamples.{level * per_level + j}", True)
    up = f"decoder.upsamples.{level * per_level + num_res_blocks + 1}"
    out += rules((f"decoder.up_blocks.{level}.upsamplers.0.resample.1", f"{up}.resample.1"),
                 (f"decoder.up_blocks.{level}.upsamplers.0.time_conv", f"{up}.time_conv"))
  return Table("diffusers", out)


def detect_format(source: TensorSource) -> str:
  keys = source.keys()
  if any(k.startswith(("decoder.up_blocks.", "encoder.conv_in.")) for k in keys):
    return "diffusers"
  if any(k.startswith(("decoder.upsamples.", "encoder.downsamples.")) for k in keys):
    return "wan"
  raise ValueError(f"{source.path}: not a Wan VAE checkpoint: neither Wan (`decoder.upsamples.N`) nor diffusers "
                   f"AutoencoderKLWan (`decoder.up_blocks.N`) key names found (e.g. {sorted(keys)[:5]})")


def _diffusers_counts(source: TensorSource) -> tuple[int, int]:
  levels, blocks = set(), set()
  for k in source.keys():
    parts = k.split(".")
    if parts[:2] == ["decoder", "up_blocks"]:
      levels.add(int(parts[2]))
      if parts[3] == "resnets" and parts[2] == "0":
        blocks.add(int(parts[4]))
  if not levels or not blocks:
    raise ValueError(f"{source.path}: diffusers VAE without decoder.up_blocks.0.resnets")
  return max(levels) + 1, max(blocks)  # level 0 has num_res_blocks + 1 resnets


def infer_config(shapes: dict[str, tuple[int, ...]], path: str) -> VaeConfig:
  """The architecture from Wan-named shapes (encoder side); the decoder is checked against it."""
  def need(name):
    if name not in shapes:
      raise ValueError(f"{path}: cannot infer the VAE config: tensor {name!r} is missing")
    return shapes[name]
  z_dim = need("conv2.weight")[0]
  base = need("encoder.conv1.weight")[0]
  res, downs = {}, {}
  for name, shape in shapes.items():
    parts = name.split(".")
    if parts[:2] == ["encoder", "downsamples"]:
      i = int(parts[2])
      if parts[3:5] == ["residual", "2"] and parts[5] == "weight":
        res[i] = shape[0]
      elif parts[3] in ("resample", "time_conv"):
        downs[i] = downs.get(i, False) or parts[3] == "time_conv"
  if not res:
    raise ValueError(f"{path}: cannot infer the VAE config: no encoder residual blocks")
  levels, current = [], []
  for i in range(max(list(res) + list(downs)) + 1):
    if i in res:
      current.append(res[i])
    elif i in downs:
      levels.append(current)
      current = []
    else:
      raise ValueError(f"{path}: encoder.downsamples.{i} is neither a residual block nor a resample")
  levels.append(current)
  counts = {len(lv) for lv in levels}
  if len(counts) != 1 or any(len(set(lv)) != 1 for lv in levels):
    raise ValueError(f"{path}: encoder levels are not Wan-shaped: residual widths per level {levels}")
  mult = tuple(lv[0] // base for lv in levels)
  if z_dim != len(LATENTS_MEAN):
    raise ValueError(f"{path}: z_dim {z_dim} is not the Wan2.1 VAE's {len(LATENTS_MEAN)} (a Wan2.2 VAE?); "
                     "its latent statistics are unknown here")
  return VaeConfig(z_dim=z_dim, base_dim=base, dim_mult=mult, num_res_blocks=counts.pop(),
                   temporal_downsample=tuple(downs[i] for i in sorted(downs)))


def convert_vae(src: str, out_dir: str, *, source_format: str = "auto", dtype: str = "bfloat16",
                progress: bool = True) -> VaeConfig:
  """Convert one Wan2.1 VAE checkpoint (Wan .pth or diffusers); returns the inferred config."""
  source = open_source(src)
  fmt = detect_format(source) if source_format == "auto" else source_format
  if fmt == "wan":
    table = WAN_TABLE
  elif fmt == "diffusers":
    table = diffusers_table(*_diffusers_counts(source))
  else:
    raise ValueError(f"--format for the VAE must be auto, wan or diffusers, got {source_format!r}")
  names = canonical_names(source, table)
  config = infer_config({c: source.shape(s) for c, s in names.items()}, src)
  # Conv weights stored in `dtype`; norm scales and biases in float32.
  expected = flatten(param_shapes(config, param_dtype=jnp.dtype(dtype)))
  flat = stack(source, names, expected, (), progress=progress)
  save_checkpoint(out_dir, "wan_vae", config, flat)
  return config
