"""The trainer's bad inputs: each is refused with a message naming it, before anything is written.

The checks run in-process on `trainer.prepare` (fast); the command line is run for --help, for a
flag typo and for one refused config, which prove the mapping of every refusal to exit status 2."""
from __future__ import annotations

import json
import os

import pytest

from configs import ode_init
from hybrid_forcing_jax.config import WAN_1_3B
from hybrid_forcing_jax.training import trainer
from tests.train_fixtures import data_overrides, run_train, write_tiny_inputs


@pytest.fixture
def inputs(tmp_path):
  write_tiny_inputs(str(tmp_path))
  return str(tmp_path)


def tiny_config(inputs: str, **changes):
  c = ode_init.get_config("tiny")
  c.data.prompts, c.ode_pairs.output_dir = f"{inputs}/prompts.txt", f"{inputs}/ode_pairs"
  c.text.cache_dir = f"{inputs}/text_cache"
  for key, value in changes.items():
    section, name = key.split("__")
    c[section][name] = value
  return c


def refused(config, workdir, *needles):
  with pytest.raises(trainer.ConfigError) as e:
    trainer.prepare(config, workdir)
  for needle in needles:
    assert needle in str(e.value), str(e.value)
  assert "\n" not in str(e.value)


def test_missing_or_empty_inputs(tmp_path, inputs):
  workdir = str(tmp_path / "run")
  refused(tiny_config(inputs, data__prompts=f"{inputs}/none.txt"), workdir, "config.data.prompts", "none.txt")
  (tmp_path / "empty.txt").write_text("\n\n")
  refused(tiny_config(inputs, data__prompts=f"{inputs}/empty.txt"), workdir, "config.data.prompts", "holds no prompt")
  refused(tiny_config(inputs, ode_pairs__output_dir=f"{inputs}/nope"), workdir, "config.data.ode_pairs", "nope")
  os.makedirs(f"{inputs}/empty_dir")
  refused(tiny_config(inputs, ode_pairs__output_dir=f"{inputs}/empty_dir"), workdir, "config.data.ode_pairs",
          "manifest.json is missing")
  assert not os.path.exists(workdir)


def test_workdir_not_writable(tmp_path, inputs):
  (tmp_path / "a_file").write_text("")
  refused(tiny_config(inputs), str(tmp_path / "a_file" / "run"), "--workdir=", "a_file")


def test_config_typo_in_the_file(tmp_path, inputs):
  config = tiny_config(inputs)
  config.optim.learning_rate = 1.0
  refused(config, str(tmp_path / "run"), "config.optim.learning_rate", "unknown key")
  config = tiny_config(inputs)
  del config.train["keep_every"]
  refused(config, str(tmp_path / "run"), "config.train.keep_every", "missing key")
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("key", ["stage", "model"])
def test_workdir_of_another_run(tmp_path, inputs, key):
  workdir = tmp_path / "run"
  workdir.mkdir()
  meta = {"stage": "ode_init", "model": trainer.run_metadata(trainer.parse(tiny_config(inputs)))["model"]}
  meta[key] = {"stage": "dmd", "model": WAN_1_3B.to_dict()}[key]
  (workdir / "run.json").write_text(json.dumps(meta))
  needles = {"stage": ["stage 'dmd'", "'ode_init'"], "model": ['"dim": 1536', '"dim": 48']}[key]
  refused(tiny_config(inputs), str(workdir), *needles)
  assert json.loads((workdir / "run.json").read_text()) == meta


def test_batch_not_divisible_by_data_parallel_size(tmp_path, inputs):
  result = run_train(str(tmp_path / "run"), *data_overrides(inputs), "--config.data.batch_size=3",
                     env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(
      "train: error: config.data.batch_size 3 is not divisible by the data-parallel size 2")
  assert not os.path.exists(tmp_path / "run")


def test_command_line_help_and_flag_typo(tmp_path, inputs):
  result = run_train("unused", "--help")
  assert result.returncode == 0, result.stderr
  assert "--workdir" in result.stdout + result.stderr
  result = run_train(str(tmp_path / "run"), *data_overrides(inputs), "--config.data.batchsize=2")
  assert result.returncode == 2, result.stderr
  assert "batchsize" in result.stderr.strip().splitlines()[-1]


def test_pairs_at_other_timesteps(tmp_path, inputs):
  """Pairs made at another shift (the peers' 8 against the schedule's 5) are refused, in the config and
  in a folder's manifest."""
  refused(tiny_config(inputs, ode_pairs__shift=8.0), str(tmp_path / "run"), "config.ode_pairs.keep", "960.0")
  manifest = tmp_path / "ode_pairs" / "manifest.json"
  meta = json.loads(manifest.read_text())
  meta["timesteps"] = [1000.0, 960.0, 888.89, 727.27, 0.0]
  manifest.write_text(json.dumps(meta))
  refused(tiny_config(inputs), str(tmp_path / "run"), "config.data.ode_pairs", "960.0", "937.5")
