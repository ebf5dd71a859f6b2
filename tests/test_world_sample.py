"""The latent codec is chosen by its folder: `sample` streams a world model (tiny DiT over the pixel
codec's 48 channels, the world's text encoder and word tokenizer) into an MP4 at the world's size, and
codec folders are told apart from VAE and other checkpoints. The world model shipped in the package
(hybrid_forcing_jax/world/model) loads, its parts fit each other, and `sample`'s defaults are the world's;
without it, `sample` says which folder it lacks."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from hybrid_forcing_jax.checkpoint import load_checkpoint
from hybrid_forcing_jax.latent_codec import load_latent_codec, save_pixel_codec
from hybrid_forcing_jax.pipeline import SHIPPED_MODEL, from_checkpoints, model_folders
from hybrid_forcing_jax.streaming.config import StreamConfig, from_config
from hybrid_forcing_jax.text_encoder import TextEncoder
from hybrid_forcing_jax.tokenizer import load_tokenizer
from hybrid_forcing_jax.world import text as world_text
from hybrid_forcing_jax.world.codec import PixelCodec, PixelCodecConfig
from hybrid_forcing_jax.world.scene import WorldConfig
from hybrid_forcing_jax.world.tokenizer import WordTokenizer
from tests.world_fixtures import save_world_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def world_model(tmp_path_factory):
  return save_world_model(str(tmp_path_factory.mktemp("world_model")))


def test_codec_folder_loads_as_a_codec_and_only_as_one(world_model):
  codec, params = load_latent_codec(world_model["codec"])
  assert isinstance(codec, PixelCodec) and codec.config == PixelCodecConfig() and params == {}
  with pytest.raises(ValueError, match="holds a 'pixel_codec' checkpoint, not 'wan_vae'"):
    load_checkpoint(world_model["codec"], "wan_vae")
  with pytest.raises(ValueError, match="holds a 'wan_dit' checkpoint, not a latent codec"):
    load_latent_codec(world_model["dit"])


def test_pipeline_streams_through_the_pixel_codec_at_the_worlds_text_length(world_model):
  text = world_model["text"]
  pipe = from_checkpoints(StreamConfig(sparse_ratio=None), dit=world_model["dit"], vae=world_model["codec"],
                          text_encoder=os.path.join(text, "text_encoder"), tokenizer=os.path.join(text, "tokenizer"))
  assert pipe.embed(["a red circle bouncing"]).shape == (1, 32, 64)   # world.text.TEXT_LEN, not Wan's 512
  chunks = [frames for _, frames in pipe.frames([(0, "a red circle bouncing")], height=32, width=32, seed=0,
                                                num_chunks=2)]
  assert [c.shape for c in chunks] == [(9, 32, 32, 3), (12, 32, 32, 3)]
  assert all(c.dtype == np.uint8 for c in chunks) and np.ptp(chunks[1]) > 0


def test_sample_cli_writes_the_world_video(world_model, tmp_path):
  imageio = pytest.importorskip("imageio")
  out = tmp_path / "world.mp4"
  text = world_model["text"]
  done = subprocess.run(
      [sys.executable, "-m", "hybrid_forcing_jax.sample", f"--dit={world_model['dit']}", f"--vae={world_model['codec']}",
       f"--text_encoder={text}/text_encoder", f"--tokenizer={text}/tokenizer", "--prompt=a blue square bouncing",
       "--width=64", "--height=64", "--num_frames=9", f"--output={out}", "--compilation_cache_dir=",
       "--attention_backend=xla", "--config.stream.sparse_backend=xla"],
      capture_output=True, text=True, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  reader = imageio.get_reader(str(out))
  assert tuple(reader.get_meta_data()["size"]) == (64, 64) and reader.count_frames() == 9


def test_pipeline_refuses_a_codec_of_other_channels(world_model, tmp_path):
  save_pixel_codec(str(tmp_path / "codec"), PixelCodecConfig(temporal_factor=1))   # 12 channels
  text = world_model["text"]
  with pytest.raises(ValueError, match="has z_dim 12, the DiT expects 48 channels"):
    from_checkpoints(StreamConfig(), dit=world_model["dit"], vae=str(tmp_path / "codec"),
                     text_encoder=os.path.join(text, "text_encoder"), tokenizer=os.path.join(text, "tokenizer"))


def test_the_shipped_model_loads_and_its_parts_fit_each_other():
  """scripts/world_pipeline.sh's export layout; the DiT reads and writes the codec's channels and the text
  encoder's width; the text is the world's word tokenizer at the world's text length; the DiT is the
  phase-2 (hybrid) student, with its linear memory."""
  folders = model_folders(SHIPPED_MODEL)
  dit_config, _ = load_checkpoint(folders["dit"], "wan_dit")
  codec, codec_params = load_latent_codec(folders["vae"])
  words = load_tokenizer(folders["tokenizer"])
  encoder = TextEncoder.from_checkpoint(folders["text_encoder"], words, text_len=world_text.TEXT_LEN)
  assert isinstance(codec, PixelCodec) and codec_params == {}
  assert dit_config.in_dim == dit_config.out_dim == codec.config.z_dim
  assert dit_config.text_dim == encoder.config.dim
  assert isinstance(words, WordTokenizer) and words.vocab_size <= encoder.config.vocab_size
  assert dit_config.linear_proj
  pipe = from_checkpoints(StreamConfig(), **folders)
  assert pipe.embed(["a blue square bouncing"]).shape == (1, world_text.TEXT_LEN, dit_config.text_dim)


def test_samples_defaults_are_the_worlds():
  """The default --config (configs/hybrid.py) streams as the shipped student was trained
  (configs/world/hybrid.py:frame); the world's frame rate is the MP4's."""
  from configs import hybrid
  from configs.world import hybrid as world_hybrid
  from hybrid_forcing_jax import sample
  assert from_config(hybrid.get_config().stream) == from_config(world_hybrid.get_config("frame").stream)
  assert WorldConfig().fps == sample.FPS


MISSING_MODEL = """
import sys
from hybrid_forcing_jax import cli, pipeline, sample
pipeline.SHIPPED_MODEL = sys.argv[1]
sys.argv = ["sample", "--output=" + sys.argv[2], "--compilation_cache_dir="]
cli.run(sample.main, "sample")
"""


def test_sample_without_the_shipped_model_names_its_folder(world_model, tmp_path):
  """A checkout without the model (here: one whose codec folder is gone) exits 1 with one line naming
  the folder, and writes nothing."""
  root = tmp_path / "model"
  shutil.copytree(os.path.dirname(world_model["dit"]), root)
  shutil.rmtree(root / "codec")
  out = tmp_path / "x.mp4"
  done = subprocess.run([sys.executable, "-c", MISSING_MODEL, str(root), str(out)], capture_output=True, text=True,
                        cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
  assert done.returncode == 1, done.stderr[-2000:]
  line = done.stderr.strip().splitlines()
  assert len(line) == 1 and line[0].startswith(f"sample: error: the shipped model {root} is missing or incomplete")
  assert f"{root}/codec" in line[0] and "--dit, --vae, --text_encoder and --tokenizer" in line[0]
  assert not out.exists()
