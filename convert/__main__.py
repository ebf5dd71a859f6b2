"""Convert a PyTorch checkpoint into the project's checkpoint folder.

  python -m convert --src=PATH --out=FOLDER [--model=dit] [--format=auto] [--weights=ema] [--expect=wan_1_3b]

The folder gets `model.safetensors` (canonical names) and `config.json` (the architecture, inferred
from the tensor shapes). Load it with `hybrid_forcing_jax.checkpoint.load_checkpoint`. Exit statuses:
hybrid_forcing_jax/cli.py (2: a bad flag or checkpoint, named in one line).
"""
from __future__ import annotations

from absl import flags

from convert import registry
from hybrid_forcing_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("src", None, "PyTorch checkpoint: .safetensors, .safetensors.index.json, .pt or .pth")
flags.DEFINE_string("out", None, "Output folder (created if missing)")
flags.DEFINE_enum("model", "dit", sorted(registry.CONVERTERS), "Which model the checkpoint holds")
flags.DEFINE_string("format", "auto", "Source format; 'auto' detects it from file type and key names. "
                    "dit: wan | diffusers | training")
flags.DEFINE_enum("weights", "ema", ["ema", "generator"], "Training checkpoints: generator_ema or generator")
flags.DEFINE_integer("num_heads", None, "Attention heads (dit), if no config.json sits beside the source")
flags.DEFINE_string("expect", None, "Fail unless the checkpoint has this architecture (dit: wan_1_3b, wan_14b)")
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Storage dtype of matmul weights")
flags.mark_flags_as_required(["src", "out"])


def main(argv) -> int:
  options = dict(source_format=FLAGS.format, dtype=FLAGS.dtype)
  dit_only = dict(weights=FLAGS.weights, num_heads=FLAGS.num_heads, expect=FLAGS.expect)
  if FLAGS.model == "dit":
    options.update(dit_only)
  else:
    given = [f"--{k}" for k in dit_only if FLAGS[k].present]
    if given:
      raise cli.BadInput(f"{', '.join(given)} only apply to --model=dit")
  try:
    config = registry.CONVERTERS[FLAGS.model](FLAGS.src, FLAGS.out, **options)
  except (ValueError, FileNotFoundError) as e:
    raise cli.BadInput(str(e)) from None
  except ImportError as e:   # torch, for .pt files
    raise cli.RunFailed(str(e)) from None
  print(f"wrote {FLAGS.out} ({FLAGS.model}): {config.to_json()}")
  return cli.EXIT_OK


if __name__ == "__main__":
  cli.run(main, "convert")
