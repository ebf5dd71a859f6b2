"""The README's GPU command, `python -m pytest -q -m gpu tests`, must collect and run wherever jax runs:
without the test extra (torch, diffusers, imageio, sentencepiece) the modules that need it are skipped,
not collection errors that stop the whole run."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A pytest plugin that makes the test extra unimportable, as on a machine without it.
WITHOUT_TEST_EXTRA = """
import sys
for name in ("torch", "diffusers", "imageio", "sentencepiece"):
  sys.modules[name] = None   # `import name` raises ImportError
"""


def test_gpu_tests_collect_without_the_test_extra(tmp_path):
  (tmp_path / "without_test_extra.py").write_text(WITHOUT_TEST_EXTRA)
  done = subprocess.run(
      [sys.executable, "-m", "pytest", "-p", "without_test_extra", "--collect-only", "-q", "-m", "gpu", "tests"],
      capture_output=True, text=True, cwd=ROOT, timeout=300,
      env={**os.environ, "PYTHONPATH": str(tmp_path), "JAX_PLATFORMS": "cpu"})
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
  assert "error" not in done.stdout.lower(), done.stdout[-3000:]
  assert "tests/test_dit_gpu.py::" in done.stdout and "tests/test_block_sparse_gpu.py::" in done.stdout
