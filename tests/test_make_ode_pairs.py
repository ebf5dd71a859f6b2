"""make_ode_pairs end to end on tiny models (configs/ode_init.py:tiny), its resume and refusals, and the
training data it feeds: the cached prompt embeddings and the grain datasets."""
from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordReader

from configs import ode_init
from hybrid_forcing_jax import cli
from hybrid_forcing_jax.checkpoint import flatten, save_checkpoint
from hybrid_forcing_jax.make_ode_pairs import prepare, sample_shards
from hybrid_forcing_jax.tokenizer import byte_tokenize
from hybrid_forcing_jax.training import builders
from hybrid_forcing_jax.training.data import prompts as prompts_module
from hybrid_forcing_jax.training.data.ode_pairs import decode_record, ode_pair_dataset, shard_name
from hybrid_forcing_jax.training.data.prompts import PromptEmbeddings, prompt_dataset, read_prompts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["a red fox running through fresh snow", "a calm sea at dawn", "fireworks over a city",
           "a cat asleep on a windowsill", "rain on a window, 雨"]
RECORDS_PER_SHARD = 2   # 5 prompts -> shards of 2, 2, 1


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  """Prompts file and a tiny teacher checkpoint (random head, so trajectories move)."""
  root = tmp_path_factory.mktemp("ode_pairs")
  (root / "prompts.txt").write_text("\n".join(PROMPTS[:3]) + "\n\n" + "\n".join(PROMPTS[3:]) + "\n")
  teacher_cfg = ode_init.get_config("tiny").teacher
  module, params = builders.build_dit(teacher_cfg)
  head = params["head"]["head"]["weight"]
  params["head"]["head"]["weight"] = 0.3 * jax.random.normal(jax.random.key(1), head.shape, head.dtype)
  save_checkpoint(str(root / "teacher"), "wan_dit", module.config,
                  {k: np.asarray(v) for k, v in flatten(params).items()})
  return root


def config(root, output: str, **overrides):
  cfg = ode_init.get_config("tiny")
  cfg.data.prompts = str(root / "prompts.txt")
  cfg.text.cache_dir = str(root / "text_cache")
  cfg.teacher.checkpoint = str(root / "teacher")
  cfg.ode_pairs.output_dir = str(root / output)
  cfg.ode_pairs.records_per_shard = RECORDS_PER_SHARD
  for key, value in overrides.items():
    section, name = key.split(".")
    cfg[section][name] = value
  return cfg


def cli_flags(cfg) -> list[str]:
  return ["--config=configs/ode_init.py:tiny", f"--config.data.prompts={cfg.data.prompts}",
          f"--config.text.cache_dir={cfg.text.cache_dir}", f"--config.teacher.checkpoint={cfg.teacher.checkpoint}",
          f"--config.ode_pairs.output_dir={cfg.ode_pairs.output_dir}",
          f"--config.ode_pairs.records_per_shard={cfg.ode_pairs.records_per_shard}"]


def run_cli(args, devices: int = 1):
  xla_flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
  return subprocess.run([sys.executable, "-m", "hybrid_forcing_jax.make_ode_pairs", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags})


def shard_records(folder) -> list[list[dict]]:
  out = []
  for s in range(3):
    reader = ArrayRecordReader(str(folder / shard_name(s)))
    out.append([decode_record(reader.read([i])[0]) for i in range(reader.num_records())])
    reader.close()
  return out


def snapshot(folder):
  return {p: os.stat(os.path.join(folder, p)).st_mtime_ns for p in sorted(os.listdir(folder))}


@pytest.fixture(scope="module")
def reference(root):
  """An uninterrupted run through the command line."""
  cfg = config(root, "reference")
  result = run_cli(cli_flags(cfg))
  assert result.returncode == 0, result.stderr
  return cfg, result.stderr


def test_cli_writes_shards_that_ode_pair_dataset_reads(root, reference):
  cfg, stderr = reference
  assert "8 Euler steps at shift 5.0" in stderr and "peers' scripts used shift 8" in stderr
  assert "s per prompt" in stderr and "3 of 3 shards done" in stderr
  embeddings = PromptEmbeddings(PROMPTS, cfg.text)
  ds = ode_pair_dataset(cfg.ode_pairs.output_dir, embeddings, shuffle=False, num_epochs=1)
  examples = [ds[i] for i in range(len(ds))]
  assert [int(e["prompt_index"]) for e in examples] == list(range(5))
  shape = (cfg.data.num_frames, *cfg.data.latent_hw, 4)
  for i, e in enumerate(examples):
    assert e["latents"].shape == (5, *shape) and e["latents"].dtype == np.float32
    # Trajectory point 0 is the prompt's own noise: key(seed) folded with its index, whatever the batch.
    noise = jax.random.normal(jax.random.fold_in(jax.random.key(cfg.ode_pairs.seed), i), shape, jnp.float32)
    np.testing.assert_array_equal(e["latents"][0], np.asarray(noise).astype(ml_dtypes.bfloat16).astype(np.float32))
    assert np.abs(e["latents"][-1] - e["latents"][0]).mean() > 0.1
    np.testing.assert_array_equal(e["context"], embeddings[i])
    np.testing.assert_allclose(e["timesteps"], [1000, 937.5, 833.333, 625, 0], rtol=1e-6)
  records = [r for shard in shard_records(root / "reference") for r in shard]
  assert [r["prompt"] for r in records] == PROMPTS


def test_killed_run_resumes_to_the_same_records_on_more_devices(root, reference):
  cfg = config(root, "resumed")
  done = sample_shards(prepare(cfg), max_shards=1)
  assert done["shards"] == 1 and sorted(os.listdir(root / "resumed")) == [
      "manifest.json", shard_name(0), shard_name(0) + ".done"]
  first = os.stat(root / "resumed" / shard_name(0))
  (root / "resumed" / (shard_name(1) + ".tmp")).write_bytes(b"half a shard")   # killed mid-shard
  # The rest on 2 devices, 2 prompts each (batches padded): the noise and the records do not change.
  result = run_cli(cli_flags(cfg) + ["--batch_per_device=2"], devices=2)
  assert result.returncode == 0 and "this run writes 2" in result.stderr, result.stderr
  assert os.stat(root / "resumed" / shard_name(0)).st_mtime_ns == first.st_mtime_ns   # skipped, not rewritten
  assert not (root / "resumed" / (shard_name(1) + ".tmp")).exists()
  for got, want in zip(shard_records(root / "resumed"), shard_records(root / "reference")):
    assert [r["prompt_index"] for r in got] == [r["prompt_index"] for r in want]
    for a, b in zip(got, want):
      np.testing.assert_array_equal(a["latents"].view(np.uint16), b["latents"].view(np.uint16))
  assert sample_shards(prepare(cfg))["prompts"] == 0   # a finished folder: nothing to do


def test_refuses_bad_inputs_and_changes_nothing(root, reference):
  cases = [
      (dict(**{"data.prompts": str(root / "missing.txt")}), "config.data.prompts: prompts file .* does not exist"),
      (dict(**{"ode_pairs.num_steps": 16, "ode_pairs.keep": (0, 4, 8, 12, 16), "ode_pairs.output_dir": "reference"}),
       r"made with a different config: ode_pairs\.keep .*; ode_pairs\.num_steps \(8 there, 16 now\)"),
      (dict(**{"data.num_frames": 9, "ode_pairs.output_dir": "reference"}), r"data\.num_frames \(6 there, 9 now\)"),
      (dict(**{"ode_pairs.output_dir": "prompts.txt/out"}), "ode_pairs.output_dir .* cannot be written"),
      (dict(**{"ode_pairs.output_dir": "text_cache"}), "exists but is not an ODE-pair folder"),
  ]
  (root / "empty.txt").write_text("\n  \n")
  cases.append((dict(**{"data.prompts": str(root / "empty.txt")}), "holds no prompt"))
  before = snapshot(root / "reference")
  for overrides, message in cases:
    output = overrides.pop("ode_pairs.output_dir", "never_made")
    with pytest.raises(cli.BadInput, match=message):
      prepare(config(root, output, **overrides))
  assert snapshot(root / "reference") == before
  assert not (root / "never_made").exists()


def test_cli_bad_input_is_one_line_and_exit_2(root):
  cfg = config(root, "never_made_cli", **{"data.prompts": str(root / "missing.txt")})
  result = run_cli(cli_flags(cfg))
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      f"make_ode_pairs: error: config.data.prompts: prompts file {str(root / 'missing.txt')!r} does not exist")
  assert not (root / "never_made_cli").exists()


def test_prompt_embeddings_are_computed_once_and_cached(root, monkeypatch):
  text = config(root, "unused").text
  text.cache_dir = str(root / "fresh_cache")
  calls = []
  build = prompts_module.build_text_encoder
  monkeypatch.setattr(prompts_module, "build_text_encoder", lambda cfg: calls.append(cfg.text_len) or build(cfg))
  first = PromptEmbeddings(PROMPTS, text)
  encoder, _ = build(text)
  ids, mask = byte_tokenize(PROMPTS, text.text_len)
  want = np.asarray(encoder.encode_ids(ids, mask).astype(jnp.bfloat16))
  # One bf16 step apart at most: the cache encodes in padded batches of 8, this call a batch of 5.
  np.testing.assert_allclose(np.stack([first[i] for i in range(5)]).astype(np.float32), want.astype(np.float32),
                             rtol=2 ** -7, atol=1e-5)
  assert not want[mask == 0].any() and first[0].shape == (text.text_len, encoder.config.dim)
  again = PromptEmbeddings(PROMPTS, text)
  np.testing.assert_array_equal(again[4], first[4])
  assert calls == [text.text_len]                     # the second set came from the cache
  text.text_len = 24
  assert PromptEmbeddings(PROMPTS, text)[0].shape[0] == 24 and calls == [16, 24]   # another key, another entry


def test_prompt_dataset_iterator_state_round_trip(root):
  cfg = config(root, "unused")
  ds = prompt_dataset(cfg)
  it = iter(ds.to_iter_dataset())
  seen = [int(next(it)["prompt_index"]) for _ in range(7)]
  assert sorted(seen[:5]) == list(range(5))           # an epoch visits every prompt once
  state = it.get_state()
  want = [next(it) for _ in range(6)]
  resumed = iter(ds.to_iter_dataset())
  resumed.set_state(state)
  got = [next(resumed) for _ in range(6)]
  assert [int(e["prompt_index"]) for e in got] == [int(e["prompt_index"]) for e in want]
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a["context"], b["context"])
  assert read_prompts(cfg.data.prompts) == PROMPTS    # blank lines skipped
