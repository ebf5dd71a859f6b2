"""umT5 encoder checkpoints (Wan's text encoder) -> the project's checkpoint folder.

Formats (one table each):
  * `wan`: Wan's `models_t5_umt5-xxl-enc-bf16.pth`, the state dict of `wan/modules/t5.py`'s
    T5Encoder. The canonical names are Wan's, so this table is the identity.
  * `transformers`: `UMT5EncoderModel` (`model.safetensors`, sharded, or `pytorch_model.bin`; e.g. the
    `text_encoder` folder of diffusers' Wan pipelines). Its tied token embedding may be stored twice
    (`shared.weight` and `encoder.embed_tokens.weight`); the copies must be equal and are read once.

The architecture is read from the tensor shapes (heads from the position-bias table [buckets, heads]);
`max_distance` and `eps` are not visible in shapes: they come from a transformers `config.json`
beside the weights, else umT5's values (128, 1e-6).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from convert.engine import Rule, Table, canonical_names, check_num_layers, stack
from convert.sources import TensorSource, neighbour_json, open_source
from hybrid_forcing_jax.checkpoint import flatten, save_checkpoint
from hybrid_forcing_jax.text_encoder import UMT5Config, param_shapes

_BLOCK_WEIGHTS = ("norm1", "attn.q", "attn.k", "attn.v", "attn.o", "norm2", "ffn.gate.0", "ffn.fc1", "ffn.fc2",
                  "pos_embedding.embedding")
WAN_TABLE = Table("wan", tuple(Rule(f"blocks.*.{m}.weight", f"blocks.*.{m}.weight") for m in _BLOCK_WEIGHTS)
                  + (Rule("token_embedding.weight", "token_embedding.weight"), Rule("norm.weight", "norm.weight")))

_HF_BLOCK = "encoder.block.*.layer"
TRANSFORMERS_TABLE = Table("transformers", (
    Rule("shared.weight", "token_embedding.weight"),
    Rule("encoder.embed_tokens.weight", "token_embedding.weight"),  # only when `shared.weight` is absent
    Rule(f"{_HF_BLOCK}.0.layer_norm.weight", "blocks.*.norm1.weight"),
    Rule(f"{_HF_BLOCK}.0.SelfAttention.q.weight", "blocks.*.attn.q.weight"),
    Rule(f"{_HF_BLOCK}.0.SelfAttention.k.weight", "blocks.*.attn.k.weight"),
    Rule(f"{_HF_BLOCK}.0.SelfAttention.v.weight", "blocks.*.attn.v.weight"),
    Rule(f"{_HF_BLOCK}.0.SelfAttention.o.weight", "blocks.*.attn.o.weight"),
    Rule(f"{_HF_BLOCK}.0.SelfAttention.relative_attention_bias.weight", "blocks.*.pos_embedding.embedding.weight"),
    Rule(f"{_HF_BLOCK}.1.layer_norm.weight", "blocks.*.norm2.weight"),
    # transformers' gelu(wi_0(x)) * wi_1(x) is Wan's fc1(x) * gate(x), gate = Sequential(Linear, GELU).
    Rule(f"{_HF_BLOCK}.1.DenseReluDense.wi_0.weight", "blocks.*.ffn.gate.0.weight"),
    Rule(f"{_HF_BLOCK}.1.DenseReluDense.wi_1.weight", "blocks.*.ffn.fc1.weight"),
    Rule(f"{_HF_BLOCK}.1.DenseReluDense.wo.weight", "blocks.*.ffn.fc2.weight"),
    Rule("encoder.final_layer_norm.weight", "norm.weight"),
))
TABLES = {"wan": WAN_TABLE, "transformers": TRANSFORMERS_TABLE}


class _WithoutTiedCopy(TensorSource):
  """Hides `encoder.embed_tokens.weight` when it is an equal copy of `shared.weight` (tied weights)."""

  def __init__(self, inner: TensorSource):
    self.path, self._inner = inner.path, inner
    self._hidden = None
    keys = set(inner.keys())
    if {"shared.weight", "encoder.embed_tokens.weight"} <= keys:
      a, b = inner.get("shared.weight"), inner.get("encoder.embed_tokens.weight")
      if a.shape != b.shape or not np.array_equal(a, b):
        raise ValueError(f"{inner.path}: 'shared.weight' and 'encoder.embed_tokens.weight' differ; a umT5 "
                         "encoder ties them, so this checkpoint is not one")
      self._hidden = "encoder.embed_tokens.weight"

  def keys(self):
    return [k for k in self._inner.keys() if k != self._hidden]

  def shape(self, key):
    return self._inner.shape(key)

  def get(self, key):
    return self._inner.get(key)


def detect_format(source: TensorSource) -> str:
  keys = set(source.keys())
  if any(k.startswith("encoder.block.") for k in keys):
    return "transformers"
  if any(k.startswith("blocks.") and ".attn.q." in k for k in keys):
    return "wan"
  if any(".self_attn.q." in k or ".attn1.to_q." in k for k in keys):
    raise ValueError(f"{source.path}: is a Wan DiT checkpoint, not a umT5 text encoder (use --model=dit)")
  raise ValueError(f"{source.path}: neither Wan nor transformers umT5 encoder key names found "
                   f"(e.g. {sorted(keys)[:5]})")


def neighbour_config(path: str) -> tuple[str, dict]:
  """transformers writes config.json beside model.safetensors; it names what the shapes do not, and the
  layer count the shapes must match."""
  candidate, cfg = neighbour_json(path)
  if "d_model" not in cfg:
    return candidate, {}  # not a transformers T5-family config (Wan's folder holds the DiT's)
  if cfg.get("model_type") not in (None, "umt5"):
    raise ValueError(f"{candidate}: model_type is {cfg['model_type']!r}, not 'umt5' (T5 shares one position "
                     "bias across layers; umT5 has one per layer)")
  if cfg.get("feed_forward_proj", "gated-gelu") != "gated-gelu":
    raise ValueError(f"{candidate}: feed_forward_proj is {cfg['feed_forward_proj']!r}; only umT5's "
                     "'gated-gelu' is supported")
  return candidate, cfg


def infer_config(shapes: dict[str, tuple[int, ...]], hf_config: dict) -> UMT5Config:
  def need(name):
    if name not in shapes:
      raise ValueError(f"cannot infer the umT5 config: tensor {name!r} is missing")
    return shapes[name]
  layers = {int(k.split(".")[1]) for k in shapes if k.startswith("blocks.")}
  if not layers or layers != set(range(len(layers))):
    raise ValueError(f"cannot infer the number of layers: block indices {sorted(layers)} are not 0..N-1")
  with_bias = {i for i in layers if f"blocks.{i}.pos_embedding.embedding.weight" in shapes}
  if with_bias == {0} and len(layers) > 1:
    raise ValueError("only layer 0 has a relative position bias: this is a T5 checkpoint (one shared bias), "
                     "not umT5 (a bias per layer)")
  vocab, dim = need("token_embedding.weight")
  num_buckets, num_heads = need("blocks.0.pos_embedding.embedding.weight")
  defaults = UMT5Config()
  return UMT5Config(
      vocab_size=vocab, dim=dim, dim_attn=need("blocks.0.attn.q.weight")[0], ffn_dim=need("blocks.0.ffn.fc1.weight")[0],
      num_heads=num_heads, num_layers=len(layers), num_buckets=num_buckets,
      max_distance=hf_config.get("relative_attention_max_distance", defaults.max_distance),
      eps=hf_config.get("layer_norm_epsilon", defaults.eps))


def convert_umt5(src: str, out_dir: str, *, source_format: str = "auto", dtype: str = "bfloat16",
                 progress: bool = True) -> UMT5Config:
  """Convert one umT5 encoder checkpoint; returns the inferred config. See the module docstring."""
  if source_format not in ("auto",) + tuple(TABLES):
    raise ValueError(f"t5: --format must be auto, {' or '.join(TABLES)}; got {source_format!r}")
  source = open_source(src)
  fmt = detect_format(source) if source_format == "auto" else source_format
  if fmt == "transformers":
    source = _WithoutTiedCopy(source)
  names = canonical_names(source, TABLES[fmt])
  config_json, hf_config = neighbour_config(src) if fmt == "transformers" else ("", {})
  config = infer_config({c: source.shape(s) for c, s in names.items()}, hf_config)
  check_num_layers(src, config.num_layers, config_json, hf_config)
  # Matmul weights and the token embedding in `dtype`; norms and position-bias tables stay float32.
  expected = flatten(param_shapes(config, param_dtype=jnp.dtype(dtype)))
  flat = stack(source, names, expected, ("blocks",), progress=progress)
  save_checkpoint(out_dir, "umt5", config, flat)
  return config
