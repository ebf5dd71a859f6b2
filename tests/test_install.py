"""A non-editable install (`pip install .`) runs: the sample finds its default config as the installed
module `configs.hybrid` and its default model, the world model shipped in the package, in the installed
package, not through the source tree. The project is built as a wheel from a copy of its packages and
installed into a folder of its own (no dependencies: they are the test machine's), and the sample's
default runs from a folder that holds no source, for a one-chunk video."""
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("hybrid_forcing_jax", "kernels", "convert", "configs")


def test_non_editable_install_runs_the_shipped_default(tmp_path):
  source, site, work = tmp_path / "source", tmp_path / "site", tmp_path / "work"
  for name in PACKAGES:
    shutil.copytree(os.path.join(ROOT, name), source / name, ignore=shutil.ignore_patterns("__pycache__"))
  for name in ("setup.py", "requirements.txt"):
    shutil.copy(os.path.join(ROOT, name), source / name)
  done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                         f"--target={site}", str(source)], capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert {p.name for p in site.iterdir()} >= set(PACKAGES)
  shutil.rmtree(source)   # nothing may come from the source tree

  work.mkdir()
  # PYTHONPATH puts the installed copy before the editable install of the checkout. JAX picks its own
  # platform, so its start-up probes (the TPU's) run, and must not reach the output.
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"} | {"PYTHONPATH": str(site)}
  probe = "import configs.hybrid, hybrid_forcing_jax.sample as s; print(configs.hybrid.__file__, s.__file__)"
  where = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=work, env=env)
  assert where.returncode == 0 and all(p.startswith(str(site)) for p in where.stdout.split()), where
  done = subprocess.run([sys.executable, "-m", "hybrid_forcing_jax.sample", "--num_frames=1", "--output=one.mp4"],
                        capture_output=True, text=True, cwd=work, env=env, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "wrote one.mp4: 1 frames" in done.stdout and "at 64x64" in done.stdout, done.stdout
  assert (work / "one.mp4").stat().st_size > 0
  assert f"streaming the world model shipped in {site}/hybrid_forcing_jax/world/model" in done.stderr, done.stderr
  assert "Unable to initialize backend" not in done.stderr, done.stderr[-2000:]
