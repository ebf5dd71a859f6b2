"""The world's grain dataset: deterministic, resumable from the iterator's state, latents through the codec."""
from __future__ import annotations

import grain
import numpy as np
import pytest

from hybrid_forcing_jax.world.codec import PixelCodec
from hybrid_forcing_jax.world.dataset import world_dataset
from hybrid_forcing_jax.world.scene import WorldConfig

CONFIG = WorldConfig(long_memory_fraction=0.5)
NO_PREFETCH = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)   # grain's default renders 500 ahead


def _captions(iterator, n):
  return [next(iterator)["caption"] for _ in range(n)]


def test_iterator_state_round_trip():
  ds = world_dataset(CONFIG, seed=5)
  it = iter(ds.to_iter_dataset(NO_PREFETCH))
  _captions(it, 3)
  state = it.get_state()
  rest = _captions(it, 4)
  resumed = iter(world_dataset(CONFIG, seed=5).to_iter_dataset(NO_PREFETCH))
  resumed.set_state(state)
  assert _captions(resumed, 4) == rest
  other_seed = iter(world_dataset(CONFIG, seed=6).to_iter_dataset(NO_PREFETCH))
  assert _captions(other_seed, 7) != _captions(iter(ds.to_iter_dataset(NO_PREFETCH)), 7)


def test_examples_carry_latents_and_both_kinds_of_scene():
  codec = PixelCodec()
  ds = world_dataset(CONFIG, seed=1, num_examples=8, codec=codec)
  examples = [ds[i] for i in range(len(ds))]
  assert len(ds) == 8 and {bool(e["long_memory"]) for e in examples} == {True, False}
  e = examples[0]
  assert e["latents"].shape == (21, 32, 32, 48) and e["latents"].dtype == np.float32
  np.testing.assert_array_equal(e["latents"], codec.encode(None, e["video"][None])[0])
  assert isinstance(e["caption"], str)


def test_unknown_split_is_named():
  with pytest.raises(ValueError, match="'validation'"):
    world_dataset(CONFIG, split="validation")
