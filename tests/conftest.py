import os

# Tests run on the CPU unless a GPU test asks otherwise; Pallas interpret mode runs on the default backend.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")


def pytest_configure(config):
  config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU; skipped elsewhere")
