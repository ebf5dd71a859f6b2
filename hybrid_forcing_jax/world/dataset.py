"""World videos generated on the fly as a grain dataset: no files; example i of a split is a pure
function of (seed, split, i), so the order is fixed, any position can be resumed (checkpoint the
iterator's get_state()) and grain's worker processes produce the same examples.

Splits: "train" (the training combinations, with `config.long_memory_fraction` long-memory scenes),
"heldout" (only grammar.HELD_OUT combinations: the prompt-following evaluation) and "long_memory"
(only long-memory scenes, of the training combinations: the long-memory evaluation).
"""
from __future__ import annotations

import grain
import numpy as np

from hybrid_forcing_jax.world.codec import PixelCodec
from hybrid_forcing_jax.world.render import render
from hybrid_forcing_jax.world.scene import Scene, WorldConfig, long_memory_scene, sample_scene

SPLITS = ("train", "heldout", "long_memory")
ENDLESS = 2**31 - 1   # examples of an endless split: fresh videos for as long as any training runs


def world_example(config: WorldConfig, split: str, seed: int, index: int, codec: PixelCodec | None = None) -> dict:
  """{"video": uint8 [T, H, W, 3], "caption": str, "colour", "shape", "direction", "motion", "background":
  str, "long_memory": bool, "index": int64}, plus "latents": float32 [1 + (T - 1) / 4, H / 2, W / 2, 48]
  when a codec is given."""
  scene = world_scene(config, split, seed, index)
  video = render(scene, config)
  out = {"video": video, "caption": scene.caption, "colour": scene.colour, "shape": scene.shape,
         "direction": scene.direction, "motion": scene.motion, "background": scene.background,
         "long_memory": np.bool_(scene.long_memory), "index": np.int64(index)}
  if codec is not None:
    out["latents"] = codec.encode(None, video[None])[0]
  return out


def world_scene(config: WorldConfig, split: str, seed: int, index: int) -> Scene:
  """The scene of example `index` of a split (what world_example renders; its caption without the video)."""
  _check_split(split)
  rng = np.random.default_rng([seed, SPLITS.index(split), index])
  if split == "long_memory" or (split == "train" and rng.random() < config.long_memory_fraction):
    return long_memory_scene(rng, config, "train")
  return sample_scene(rng, config, split)


class _Example:
  """index -> world_example (a class, not a lambda, so grain's workers can pickle it)."""

  def __init__(self, config: WorldConfig, split: str, seed: int, codec: PixelCodec | None):
    _check_split(split)
    self.config, self.split, self.seed, self.codec = config, split, seed, codec

  def __call__(self, index):
    return world_example(self.config, self.split, self.seed, int(index), self.codec)


def world_dataset(config: WorldConfig, *, split: str = "train", seed: int = 0, num_examples: int | None = None,
                  codec: PixelCodec | None = None) -> grain.MapDataset:
  """Examples 0 .. num_examples - 1 of a split (None: endless), unbatched. Checkpoint the position with
  the iterator's get_state() / set_state() (`iter(ds.to_iter_dataset(read_options))`). A 64x64 video
  takes ~10 ms to render; grain's default read options render 500 ahead in 16 threads, so pass
  `grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)` where CPU is scarce (tests)."""
  return grain.MapDataset.range(ENDLESS if num_examples is None else num_examples).map(
      _Example(config, split, seed, codec))


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
