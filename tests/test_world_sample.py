"""The latent codec is chosen by its folder: `sample` streams a world model (tiny DiT over the pixel
codec's 48 channels, the world's text encoder and word tokenizer) into an MP4 at the world's size, and
codec folders are told apart from VAE and other checkpoints."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from hybrid_forcing_jax.checkpoint import load_checkpoint
from hybrid_forcing_jax.latent_codec import load_latent_codec, save_pixel_codec
from hybrid_forcing_jax.pipeline import from_checkpoints
from hybrid_forcing_jax.streaming.config import StreamConfig
from hybrid_forcing_jax.world.codec import PixelCodec, PixelCodecConfig
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
