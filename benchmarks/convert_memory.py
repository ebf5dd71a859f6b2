"""Peak host memory of converting a full-size (1.3B) Wan checkpoint, against the checkpoint's size.

  python -m benchmarks.convert_memory --workdir=/tmp/convert_memory [--dtype=float32]

Writes a random checkpoint with Wan's original names and 1.3B shapes (float32, as Wan releases it,
about 5.7 GB) tensor by tensor, then runs `python -m convert` in a child process and reports the
child's peak resident memory (ru_maxrss) next to the input and output sizes.
"""
import json
import os
import resource
import struct
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

from convert.wan_dit import WAN_TABLE
from hybrid_forcing_jax.checkpoint import flatten
from hybrid_forcing_jax.config import WAN_1_3B
from hybrid_forcing_jax.dit import param_shapes

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "/tmp/convert_memory", "Where the synthetic checkpoint and output go")
flags.DEFINE_string("dtype", "float32", "dtype of the synthetic source checkpoint")


def wan_shapes(config):
  """Per-layer Wan names and shapes, unstacked from our canonical tree."""
  out = {}
  for name, spec in flatten(param_shapes(config)).items():
    if name.startswith("blocks."):
      rest = name[len("blocks."):]
      for i in range(config.num_layers):
        out[f"blocks.{i}.{rest}"] = tuple(spec.shape[1:])
    else:
      out[name] = tuple(spec.shape)
  assert all(WAN_TABLE.rename(k) == k for k in out)
  return out


def write_safetensors_streaming(path, shapes, dtype):
  """The safetensors layout (8-byte header size, JSON header, raw data) written one tensor at a time."""
  dt = np.dtype(dtype)
  code = {"float32": "F32", "float16": "F16"}[dt.name]
  header, offset = {}, 0
  for name in sorted(shapes):
    size = int(np.prod(shapes[name])) * dt.itemsize
    header[name] = {"dtype": code, "shape": list(shapes[name]), "data_offsets": [offset, offset + size]}
    offset += size
  blob = json.dumps(header).encode()
  blob += b" " * (-len(blob) % 8)
  rng = np.random.default_rng(0)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for name in sorted(shapes):
      f.write((rng.standard_normal(shapes[name], np.float32) * 0.02).astype(dt).tobytes())


def main(argv):
  del argv
  os.makedirs(FLAGS.workdir, exist_ok=True)
  src = os.path.join(FLAGS.workdir, "diffusion_pytorch_model.safetensors")
  if not os.path.exists(src):
    write_safetensors_streaming(src, wan_shapes(WAN_1_3B), FLAGS.dtype)
  out = os.path.join(FLAGS.workdir, "converted")
  start = time.perf_counter()
  subprocess.run([sys.executable, "-m", "convert", f"--src={src}", f"--out={out}", "--num_heads=12",
                  "--expect=wan_1_3b"], check=True)
  seconds = time.perf_counter() - start
  peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
  size_in = os.path.getsize(src)
  size_out = os.path.getsize(os.path.join(out, "model.safetensors"))
  gb = 1e9
  print(f"{'source (fp32)':24s} {size_in / gb:8.2f} GB")
  print(f"{'converted (bf16)':24s} {size_out / gb:8.2f} GB")
  print(f"{'peak RSS of convert':24s} {peak / gb:8.2f} GB  ({peak / size_in:.2f}x the source)")
  print(f"{'wall time':24s} {seconds:8.1f} s")


if __name__ == "__main__":
  app.run(main)
