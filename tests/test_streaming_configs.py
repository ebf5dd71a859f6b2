"""ml_collections configs map onto StreamConfig; bad settings are refused with a reason."""
import pytest

from configs import hybrid, self_forcing
from hybrid_forcing_jax.streaming.config import HYBRID, SELF_FORCING, StreamConfig, from_config


def test_configs_match_presets():
  assert from_config(hybrid.get_config().stream) == HYBRID
  assert from_config(self_forcing.get_config().stream) == SELF_FORCING
  assert (HYBRID.sink_frames, HYBRID.ring_frames, HYBRID.cache_slots) == (3, 3, 6)
  assert (SELF_FORCING.sink_frames, SELF_FORCING.ring_frames) == (0, 18)
  assert HYBRID.valid_frame_counts() == (0, 3, 6)


@pytest.mark.parametrize("kw,needle", [
    (dict(window_frames=5), "must hold the sink"),
    (dict(rope_cap=8), "rope_cap 8"),
    (dict(rope="alibi"), "rope must be"),
    (dict(sparse_ratio=1.5), "sparse_ratio"),
])
def test_bad_stream_configs(kw, needle):
  with pytest.raises(ValueError, match=needle):
    StreamConfig(**kw)
  with pytest.raises(ValueError, match="unknown keys"):
    from_config(dict(window=9))
