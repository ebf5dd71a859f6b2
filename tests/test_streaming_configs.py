"""The ml_collections config files, the one source of the stream settings, map onto StreamConfig; bad
settings are refused with a reason."""
import pytest

from configs import hybrid, self_forcing
from hybrid_forcing_jax.streaming.config import StreamConfig, from_config


def test_config_files_hold_the_papers_settings():
  hybrid_stream, dense_stream = (from_config(m.get_config().stream) for m in (hybrid, self_forcing))
  assert (hybrid_stream.sink_frames, hybrid_stream.ring_frames, hybrid_stream.cache_slots) == (3, 3, 6)
  assert hybrid_stream.valid_frame_counts() == (0, 3, 6)
  assert (hybrid_stream.rope, hybrid_stream.linear, hybrid_stream.sparse_ratio) == ("relative", True, 0.2)
  assert (dense_stream.sink_frames, dense_stream.ring_frames) == (0, 18)
  assert (dense_stream.rope, dense_stream.linear, dense_stream.sparse_ratio) == ("absolute", False, None)


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
