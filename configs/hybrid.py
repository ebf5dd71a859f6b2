"""Hybrid Forcing's streaming setting (paper / configs/hybrid_forcing.yaml of the released code):
sink 3 + window 9 latent frames, linear memory of evicted frames, relative RoPE capped at 21,
top-20% block-sparse softmax, Self-Forcing's warped 4-step schedule. `sample --config=` reads
`stream`; the model's architecture comes from the checkpoint's config.json (a hybrid checkpoint has
`linear_proj`). The DMD training sections join this file with the DMD stage.

  from configs.hybrid import get_config
  cfg = get_config(); stream = hybrid_forcing_jax.streaming.config.from_config(cfg.stream)
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stream = ml_collections.ConfigDict(dict(
      chunk_frames=3, sink_frames=3, window_frames=9, rope="relative", rope_cap=21,
      linear=True, linear_eps=1e-6, sparse_ratio=0.2, keep_sink=False, keep_own_chunk=False, sparse_backend="auto",
      denoising_steps=(1000, 750, 500, 250), warp_denoising_steps=True, shift=5.0, num_train_timesteps=1000))
  return c
