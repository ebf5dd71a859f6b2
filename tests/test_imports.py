"""Importing the package must not start an accelerator: on a GPU that grabs most of its memory, so a
parent process that only launches workers (benchmarks, data loaders) would starve them."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = """
import benchmarks.bench_dmd_breakdown, benchmarks.bench_end_to_end, benchmarks.bench_streaming, convert.__main__
import kernels.block_sparse
import hybrid_forcing_jax.pipeline, hybrid_forcing_jax.sample
from jax._src import xla_bridge
print(sorted(xla_bridge._backends))
"""


def test_import_starts_no_backend():
  done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip().splitlines()[-1] == "[]"
