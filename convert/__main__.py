"""Convert a PyTorch checkpoint into the project's checkpoint folder.

  python -m convert --src=PATH --out=FOLDER [--model=dit] [--format=auto] [--weights=ema] [--expect=wan_1_3b]

The folder gets `model.safetensors` (canonical names) and `config.json` (the architecture, inferred
from the tensor shapes). Load it with `hybrid_forcing_jax.checkpoint.load_checkpoint`.
"""
from absl import app, flags

from convert import registry

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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  options = dict(source_format=FLAGS.format, dtype=FLAGS.dtype)
  dit_only = dict(weights=FLAGS.weights, num_heads=FLAGS.num_heads, expect=FLAGS.expect)
  if FLAGS.model == "dit":
    options.update(dit_only)
  else:
    given = [f"--{k}" for k in dit_only if FLAGS[k].present]
    if given:
      raise app.UsageError(f"{', '.join(given)} only apply to --model=dit")
  try:
    config = registry.CONVERTERS[FLAGS.model](FLAGS.src, FLAGS.out, **options)
  except (ValueError, FileNotFoundError, ImportError) as e:
    raise SystemExit(f"convert: error: {e}")
  print(f"wrote {FLAGS.out} ({FLAGS.model}): {config.to_json()}")


if __name__ == "__main__":
  app.run(main)
