"""The world generator: deterministic from its seed, the held-out split kept, captions that say what
the video shows (read back by the detector, which this also validates), and long-memory videos whose
object is gone from the softmax window when it comes back."""
from __future__ import annotations

import numpy as np
import pytest

from hybrid_forcing_jax.streaming.config import from_config
from hybrid_forcing_jax.world import grammar
from hybrid_forcing_jax.world.dataset import world_example
from hybrid_forcing_jax.world.detect import detect
from hybrid_forcing_jax.world.scene import WorldConfig, long_memory_fits
from configs.hybrid import get_config as hybrid_config

CONFIG = WorldConfig()


def test_same_seed_same_video_other_index_other_video():
  a, b = world_example(CONFIG, "train", 7, 3), world_example(CONFIG, "train", 7, 3)
  np.testing.assert_array_equal(a["video"], b["video"])
  assert a["caption"] == b["caption"]
  c = world_example(CONFIG, "train", 7, 4)
  assert not np.array_equal(a["video"], c["video"])
  assert a["video"].shape == (81, 64, 64, 3) and a["video"].dtype == np.uint8


def test_held_out_combinations_split():
  assert len(set(grammar.HELD_OUT)) == 12 and len(grammar.combinations("train")) == 60
  for i in range(40):
    train, held = world_example(CONFIG, "train", 0, i), world_example(CONFIG, "heldout", 0, i)
    assert (train["colour"], train["shape"], train["direction"]) not in grammar.HELD_OUT
    assert (held["colour"], held["shape"], held["direction"]) in grammar.HELD_OUT


def test_captions_say_only_the_truth():
  for i in range(40):
    e = world_example(CONFIG, "train", 1, i)
    said = grammar.parse_caption(e["caption"])
    assert said["shape"] == e["shape"] and said["motion"] == e["motion"]
    for part in ("colour", "direction", "background"):
      assert said[part] in (None, e[part])
    assert set(e["caption"].split()) <= set(grammar.vocabulary())


@pytest.mark.parametrize("split, seeds", [("train", 50), ("heldout", 50), ("long_memory", 20)])
def test_detector_reads_back_the_scene(split, seeds):
  """On ground-truth videos the detector reads the colour, shape, direction and background of every
  one of the seeds (they vary position, size, speed, bouncing or leaving the view)."""
  misses = []
  for i in range(seeds):
    e = world_example(CONFIG, split, 2, i)
    d = detect(e["video"])
    misses += [(i, k, getattr(d, k), e[k]) for k in ("colour", "shape", "direction", "background")
               if getattr(d, k) != e[k]]
  assert misses == []


def test_long_memory_video_leaves_and_comes_back():
  appear, leave, back = CONFIG.long_memory_frames
  for i in range(5):
    e = world_example(CONFIG, "long_memory", 3, i)
    assert e["long_memory"] and grammar.parse_caption(e["caption"])["colour"] is None
    d = detect(e["video"])
    # Entering and leaving frames show only a sliver, under the detector's minimum.
    assert not d.present[:appear].any() and not d.present[leave:back].any()
    assert d.present[appear + 1:leave - 1].all() and d.present[back + 1:].all()
    assert d.colour_between(back, CONFIG.num_frames) == e["colour"]


def test_long_memory_timing_needs_memory_in_the_hybrid_stream():
  stream = from_config(hybrid_config().stream)
  kwargs = dict(sink_frames=stream.sink_frames, window_frames=stream.window_frames,
                chunk_frames=stream.chunk_frames, temporal_factor=4)
  long_memory_fits(CONFIG, **kwargs)
  with pytest.raises(ValueError, match="still holds latent frame"):
    long_memory_fits(WorldConfig(long_memory_frames=(12, 32, 40)), **kwargs)
  with pytest.raises(ValueError, match="inside the 3 sink"):
    long_memory_fits(WorldConfig(long_memory_frames=(4, 32, 68)), **kwargs)


def test_bad_world_config_is_named():
  with pytest.raises(ValueError, match="free_frames"):
    WorldConfig(speed=(0.01, 0.08))
  with pytest.raises(ValueError, match="long_memory_frames"):
    WorldConfig(long_memory_frames=(12, 32, 90))
