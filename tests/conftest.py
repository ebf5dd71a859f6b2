import os

import pytest


def pytest_configure(config):
  config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU; skipped elsewhere")
  # Everything runs on the CPU (Pallas Triton kernels in interpret mode run on the default backend),
  # except a run that selects the GPU tests (`-m gpu`), which keeps the GPU visible.
  markexpr = config.getoption("markexpr") or ""
  if not ("gpu" in markexpr and "not gpu" not in markexpr):
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def pytest_collection_modifyitems(config, items):
  import jax
  if jax.default_backend() == "gpu":
    return
  skip = pytest.mark.skip(reason="needs an NVIDIA GPU (run: python -m pytest -q -m gpu tests on a GPU machine)")
  for item in items:
    if "gpu" in item.keywords:
      item.add_marker(skip)
