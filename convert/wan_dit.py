"""Wan2.1 DiT checkpoints -> the project's checkpoint folder.

Formats (one table each):
  * `wan`: Wan's original names (`diffusion_pytorch_model.safetensors`, single or sharded). The
    canonical names are Wan's, so this table is the identity.
  * `diffusers`: `WanTransformer3DModel` names (`blocks.0.attn1.to_q.weight`).
  * `training`: Self-Forcing / Hybrid Forcing `.pt` files: a `generator_ema` and/or `generator` state
    dict whose keys are Wan's under a `model.` prefix, possibly with FSDP / activation-checkpoint /
    torch.compile wrapper segments; Hybrid Forcing adds `blocks.N.self_attn.linear_proj`.
"""
from __future__ import annotations

import math

import jax.numpy as jnp

from convert.engine import Rule, Table, canonical_names, check_num_layers, rules, stack
from convert.sources import RenamedSource, TensorSource, neighbour_json, open_source
from hybrid_forcing_jax.checkpoint import flatten, save_checkpoint
from hybrid_forcing_jax.config import PRESETS, WanConfig
from hybrid_forcing_jax.dit import param_shapes

_BLOCK_MODULES = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                  "cross_attn.v", "cross_attn.o", "norm3", "ffn.0", "ffn.2")
_TOP_MODULES = ("patch_embedding", "text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2",
                "time_projection.1", "head.head")
_NORM_WEIGHTS = tuple(f"blocks.*.{a}.{n}.weight" for a in ("self_attn", "cross_attn") for n in ("norm_q", "norm_k"))
_LINEAR_PROJ = rules(("blocks.*.self_attn.linear_proj", "blocks.*.self_attn.linear_proj"))

WAN_TABLE = Table("wan", rules(*[(f"blocks.*.{m}",) * 2 for m in _BLOCK_MODULES], *[(m, m) for m in _TOP_MODULES])
                  + tuple(Rule(n, n) for n in _NORM_WEIGHTS + ("blocks.*.modulation", "head.modulation")))

DIFFUSERS_TABLE = Table("diffusers", rules(
    ("patch_embedding", "patch_embedding"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("blocks.*.attn1.to_q", "blocks.*.self_attn.q"),
    ("blocks.*.attn1.to_k", "blocks.*.self_attn.k"),
    ("blocks.*.attn1.to_v", "blocks.*.self_attn.v"),
    ("blocks.*.attn1.to_out.0", "blocks.*.self_attn.o"),
    ("blocks.*.attn2.to_q", "blocks.*.cross_attn.q"),
    ("blocks.*.attn2.to_k", "blocks.*.cross_attn.k"),
    ("blocks.*.attn2.to_v", "blocks.*.cross_attn.v"),
    ("blocks.*.attn2.to_out.0", "blocks.*.cross_attn.o"),
    # diffusers' norm2 is the affine LayerNorm before cross-attention, Wan's norm3.
    ("blocks.*.norm2", "blocks.*.norm3"),
    ("blocks.*.ffn.net.0.proj", "blocks.*.ffn.0"),
    ("blocks.*.ffn.net.2", "blocks.*.ffn.2"),
    ("proj_out", "head.head"),
) + rules(
    ("blocks.*.attn1.norm_q", "blocks.*.self_attn.norm_q"),
    ("blocks.*.attn1.norm_k", "blocks.*.self_attn.norm_k"),
    ("blocks.*.attn2.norm_q", "blocks.*.cross_attn.norm_q"),
    ("blocks.*.attn2.norm_k", "blocks.*.cross_attn.norm_k"),
    params=("weight",),
) + (
    Rule("blocks.*.scale_shift_table", "blocks.*.modulation"),
    Rule("scale_shift_table", "head.modulation"),
))

TRAINING_TABLE = Table("training", WAN_TABLE.rules + _LINEAR_PROJ)
TABLES = {"wan": WAN_TABLE, "diffusers": DIFFUSERS_TABLE, "training": TRAINING_TABLE}

# Self-Forcing wraps the DiT as `model.` inside its diffusion wrapper; FSDP, activation checkpointing
# and torch.compile insert these segments into names.
TRAINING_PREFIX = "model."
WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
TRAINING_CONTAINERS = ("generator_ema", "generator")


def strip_training_key(key: str) -> str:
  for segment in WRAPPER_SEGMENTS:
    key = key.replace(segment, "")
  return key[len(TRAINING_PREFIX):] if key.startswith(TRAINING_PREFIX) else key


def detect_format(source: TensorSource) -> str:
  keys = set(source.keys())
  if any(".attn1.to_q." in k for k in keys):
    return "diffusers"
  if any(".self_attn.q." in k for k in keys):
    return "wan"
  raise ValueError(f"{source.path}: neither Wan nor diffusers DiT key names found (e.g. {sorted(keys)[:5]})")


def infer_config(shapes: dict[str, tuple[int, ...]], num_heads: int | None = None) -> WanConfig:
  """The architecture from canonical per-layer shapes. Heads are not visible in any shape: they come
  from `num_heads`, else from linear_proj (head_dim x head_dim), else Wan's head_dim of 128."""
  def need(name):
    if name not in shapes:
      raise ValueError(f"cannot infer the model config: tensor {name!r} is missing")
    return shapes[name]
  dim, in_dim, *patch = need("patch_embedding.weight")
  layers = {int(k.split(".")[1]) for k in shapes if k.startswith("blocks.")}
  if layers != set(range(len(layers))) or not layers:
    raise ValueError(f"cannot infer the number of layers: block indices {sorted(layers)} are not 0..N-1")
  has_linear_proj = "blocks.0.self_attn.linear_proj.weight" in shapes
  if num_heads is None:
    head_dim = shapes["blocks.0.self_attn.linear_proj.weight"][0] if has_linear_proj else 128
    if dim % head_dim:
      raise ValueError(f"cannot infer the number of attention heads: dim {dim} is not a multiple of the head "
                       f"size {head_dim}, and no config.json beside the checkpoint names them; pass --num_heads")
    num_heads = dim // head_dim
  return WanConfig(
      dim=dim, ffn_dim=need("blocks.0.ffn.0.weight")[0], num_heads=num_heads, num_layers=len(layers),
      in_dim=in_dim, out_dim=need("head.head.weight")[0] // math.prod(patch), text_dim=need("text_embedding.0.weight")[1],
      freq_dim=need("time_embedding.0.weight")[1], patch_size=tuple(patch), linear_proj=has_linear_proj)


def neighbour_config(path: str) -> tuple[str, dict]:
  """Wan and diffusers folders keep a config.json beside the weights: it names the head count (no
  shape shows it) and the layer count (which the shapes must match)."""
  where, cfg = neighbour_json(path)
  return (where, {}) if "d_model" in cfg else (where, cfg)   # d_model: a transformers text encoder's
def convert_dit(src: str, out_dir: str, *, source_format: str = "auto", weights: str = "ema",
                num_heads: int | None = None, expect: str | None = None, dtype: str = "bfloat16",
                progress: bool = True) -> WanConfig:
  """Convert one DiT checkpoint; returns the inferred config. See the module docstring for formats.

  weights: for training checkpoints, 'ema' (generator_ema) or 'generator'.
  expect: a preset name ('wan_1_3b', 'wan_14b'); the checkpoint must have that architecture.
  """
  if weights not in ("ema", "generator"):
    raise ValueError(f"weights must be 'ema' or 'generator', got {weights!r}")
  is_training = src.endswith((".pt", ".pth", ".ckpt")) if source_format == "auto" else source_format == "training"
  if is_training:
    container = "generator_ema" if weights == "ema" else "generator"
    source = RenamedSource(open_source(src, container=container), strip_training_key)
    table = TRAINING_TABLE
  else:
    source = open_source(src, containers=TRAINING_CONTAINERS)
    table = TABLES[detect_format(source) if source_format == "auto" else source_format]
  names = canonical_names(source, table)
  config_json, declared = neighbour_config(src)
  config = infer_config({c: source.shape(s) for c, s in names.items()},
                        num_heads or declared.get("num_heads", declared.get("num_attention_heads")))
  check_num_layers(src, config.num_layers, config_json, declared)
  if expect is not None:
    if expect not in PRESETS:
      raise ValueError(f"--expect must be one of {sorted(PRESETS)}, got {expect!r}")
    want = PRESETS[expect]
    if config.linear_proj and not want.linear_proj:
      want = WanConfig(**{**want.to_dict(), "linear_proj": True})
    if config != want:
      diff = {k: (v, want.to_dict()[k]) for k, v in config.to_dict().items() if v != want.to_dict()[k]}
      raise ValueError(f"{src}: is not a {expect} checkpoint; (checkpoint, {expect}) differ in {diff}")
  # Linear weights are stored in `dtype`; norms, modulation and the time embedding stay float32.
  expected = flatten(param_shapes(config, param_dtype=jnp.dtype(dtype)))
  flat = stack(source, names, expected, ("blocks",), progress=progress)
  save_checkpoint(out_dir, "wan_dit", config, flat)
  return config
