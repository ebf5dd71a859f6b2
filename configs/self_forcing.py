"""Self-Forcing's dense streaming setting: no sink, a rolling 21-frame window (18 earlier frames +
the chunk), absolute RoPE, no linear memory, dense softmax, the same warped 4-step schedule."""
import ml_collections

from configs import hybrid


def get_config() -> ml_collections.ConfigDict:
  c = hybrid.get_config()
  c.stream.update(dict(sink_frames=0, window_frames=21, rope="absolute", linear=False, sparse_ratio=None))
  return c
