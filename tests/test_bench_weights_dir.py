"""benchmarks/bench_end_to_end.py --weights_dir: the random weights it writes are converted folders in the layout
`sample` reads (pipeline.model_folders), in the converters' storage dtypes, that `sample`'s own loaders read back
with the values that were made; a folder already there is kept. Tiny configs stand in for the full-size ones."""
from __future__ import annotations

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.bench_end_to_end import host_t5_params, write_random_weights
from hybrid_forcing_jax.checkpoint import CONFIG_FILE, WEIGHTS_FILE, flatten, load_checkpoint
from hybrid_forcing_jax.config import tiny_config
from hybrid_forcing_jax.dit import init_params as init_dit_params
from hybrid_forcing_jax.dit import param_shapes
from hybrid_forcing_jax.latent_codec import load_latent_codec
from hybrid_forcing_jax.pipeline import model_folders
from hybrid_forcing_jax.text_encoder import TextEncoder, UMT5Config
from hybrid_forcing_jax.vae import VaeConfig, WanVAE
from hybrid_forcing_jax.vae import init_params as init_vae_params
from tests.train_fixtures import REPO

WAN = tiny_config(linear_proj=True)
T5 = UMT5Config(vocab_size=64, dim=16, dim_attn=16, ffn_dim=32, num_heads=4, num_layers=2)
VAE = VaeConfig(base_dim=8, dim_mult=(1, 2, 2, 2))


def _same(loaded: dict, made: dict):
  loaded, made = flatten(loaded), flatten(made)
  assert sorted(loaded) == sorted(made)
  for name, x in made.items():
    y = np.asarray(loaded[name])
    np.testing.assert_array_equal(y.astype(np.float32), np.asarray(x).astype(y.dtype).astype(np.float32), err_msg=name)


def test_written_weights_load_as_sample_loads_them(tmp_path):
  folder = str(tmp_path / "weights")
  write_random_weights(folder, WAN, T5, VAE)
  paths = model_folders(folder)

  _, dit = load_checkpoint(paths["dit"], "wan_dit", expected_config=WAN)
  made = jax.jit(functools.partial(init_dit_params, WAN, param_dtype=jnp.bfloat16))(jax.random.key(0))
  _same(dit, made)
  # the converters' storage dtypes, not the bf16 everything was made in: fp32 norms and modulation
  storage = flatten(param_shapes(WAN))
  assert {n: x.dtype for n, x in flatten(dit).items()} == {n: s.dtype for n, s in storage.items()}
  assert any(s.dtype == jnp.float32 for s in storage.values())

  vae, vae_params = load_latent_codec(paths["vae"])
  assert isinstance(vae, WanVAE) and vae.config == VAE
  _same(vae_params, init_vae_params(VAE, 0))

  encoder = TextEncoder.from_checkpoint(paths["text_encoder"], weights_on_host=False)
  assert encoder.config == T5
  _same(encoder.params, host_t5_params(T5, jax.random.key(1)))

  # a second call keeps what is there
  stamps = {p: os.stat(os.path.join(path, WEIGHTS_FILE)).st_mtime_ns for p, path in paths.items() if p != "tokenizer"}
  os.remove(os.path.join(paths["vae"], WEIGHTS_FILE))
  os.remove(os.path.join(paths["vae"], CONFIG_FILE))
  write_random_weights(folder, WAN, T5, VAE)
  for part in ("dit", "text_encoder"):
    assert os.stat(os.path.join(paths[part], WEIGHTS_FILE)).st_mtime_ns == stamps[part]
  assert os.path.exists(os.path.join(paths["vae"], WEIGHTS_FILE))


def test_weights_dir_refuses_tiny_and_two_settings(tmp_path):
  for extra in (["--tiny", "--setting=hybrid"], ["--setting=both"]):
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_end_to_end", f"--weights_dir={tmp_path}", *extra],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2 and "--weights_dir" in done.stderr.splitlines()[-1], done.stderr
  assert not os.listdir(tmp_path)
