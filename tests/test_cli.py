"""Every entry point follows one convention (hybrid_forcing_jax/cli.py, README: Exit statuses): --help and
--helpfull exit 0, a bad flag exits 2 with one line, and JAX's TPU probe does not reach the log."""
import logging
import os
import subprocess
import sys

import pytest

from hybrid_forcing_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_POINTS = ["hybrid_forcing_jax.sample", "convert", "hybrid_forcing_jax.train", "hybrid_forcing_jax.make_ode_pairs",
                "hybrid_forcing_jax.make_teacher_rollouts", "hybrid_forcing_jax.evaluate_world",
                "hybrid_forcing_jax.world.prepare"]


def run(module, *args):
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT,
                        timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_help_exits_0_and_a_bad_flag_exits_2(module):
  for flag in ("--help", "--helpfull"):
    done = run(module, flag)
    assert done.returncode == 0, (flag, done.stderr[-1000:])
    assert "flags:" in done.stdout.lower(), done.stdout[-500:]
  done = run(module, "--no_such_flag=1")
  assert done.returncode == 2, done.stderr[-1000:]
  assert done.stderr.strip() == f"{module.removeprefix('hybrid_forcing_jax.')}: error: Unknown command line flag 'no_such_flag'"


def test_tpu_probe_is_not_logged(caplog):
  """jax._src.xla_bridge logs this on every start on a machine without a TPU; other records pass."""
  cli._quiet_backend_probe()
  logger = logging.getLogger("jax._src.xla_bridge")
  with caplog.at_level(logging.INFO, logger="jax._src.xla_bridge"):
    logger.info("Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so")
    logger.info("Unable to initialize backend 'cuda': no GPU")
  assert [r.getMessage() for r in caplog.records] == ["Unable to initialize backend 'cuda': no GPU"]


@pytest.mark.parametrize("module,config", [
    ("hybrid_forcing_jax.sample", []),   # its default config
    ("hybrid_forcing_jax.train", ["--config=configs/ode_init.py"]),
    ("hybrid_forcing_jax.make_ode_pairs", ["--config=configs/ode_init.py"]),
])
def test_config_mistakes_are_one_line(module, config):
  command = module.split(".")[-1]
  done = run(module, *config, "--config.no_such_section.x=1")
  assert done.returncode == 2, done.stderr[-1000:]
  assert done.stderr.strip() == f"{command}: error: --config.no_such_section.x: the config has no key 'no_such_section'"
  done = run(module, "--config=/no/such/config.py")
  assert done.returncode == 2, done.stderr[-1000:]
  assert done.stderr.strip() == f"{command}: error: --config=/no/such/config.py: no such file"
