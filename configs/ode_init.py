"""Stage ode_init: the causal student regresses the clean latent from teacher ODE trajectories.

Per chunk of `stream.chunk_frames` latent frames an index i is drawn; the student (block-causal
layout, starting from converted Wan2.1-T2V-1.3B) sees trajectory point i at the i-th timestep of
the warped 4-step schedule and is trained by MSE on x0 (CausVid / Self-Forcing ODE regression,
docs/training.md). The `ode_pairs` section is read by make_ode_pairs, which writes the pairs.

  python -m hybrid_forcing_jax.make_ode_pairs --config=configs/ode_init.py
  python -m hybrid_forcing_jax.train --config=configs/ode_init.py --workdir=runs/ode_init
  python -m hybrid_forcing_jax.train --config=configs/ode_init.py:tiny --workdir=/tmp/run   # CPU, random weights

`:tiny` swaps in tiny random models, 8x8 latents and a few steps (tests, CPU); any key can also be
overridden with `--config.section.key=value`.
"""
import ml_collections

from configs import self_forcing

# Wan2.1's negative prompt (its shared_config `sample_neg_prompt`), the unconditional branch of CFG.
WAN_NEGATIVE_PROMPT = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
                       "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
                       "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")


def dit_section(checkpoint: str, remat_policy: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(preset="wan_1_3b", overrides={}, checkpoint=checkpoint, dtype="bfloat16",
                                        remat_policy=remat_policy, attention_backend="auto"))


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stage = "ode_init"
  c.model = dit_section("ckpt/dit_1_3b", remat_policy="full")
  # Self-Forcing made its pairs with the 1.3B teacher (training_spec.md 1).
  c.teacher = dit_section("ckpt/dit_1_3b", remat_policy="none")
  c.text = ml_collections.ConfigDict(dict(
      encoder="ckpt/umt5", tokenizer="Wan2.1-T2V-1.3B/google/umt5-xxl", text_len=512, cache_dir="data/text_cache",
      negative_prompt=WAN_NEGATIVE_PROMPT))
  # The student's chunking and 4-step schedule: Self-Forcing's dense setting (the DMD phase 1 it feeds).
  c.stream = self_forcing.get_config().stream
  c.ode_pairs = ml_collections.ConfigDict(dict(
      output_dir=ml_collections.FieldReference("data/ode_pairs"),
      # 48 Euler steps at shift 5 put trajectory points 0/12/24/36 exactly at the student's warped
      # timesteps [1000, 937.5, 833.3, 625]; the peers' shift 8 does not (training_spec.md 1).
      num_steps=48, shift=5.0, guidance=6.0, keep=(0, 12, 24, 36, 48), records_per_shard=64, seed=0))
  c.data = ml_collections.ConfigDict(dict(
      prompts="data/prompts.txt", ode_pairs=c.ode_pairs.get_ref("output_dir"), num_frames=21, latent_hw=(60, 104),
      # 4 threads read and decode the shards ahead of the step: on one thread a batch of 32 world pairs took
      # 1.2 s, most of a 1.4-1.8 s ODE-init step on an H200 (docs/benchmarks.md).
      batch_size=32, seed=0, num_workers=4))
  # CausVid's ODE regression: AdamW lr 2e-6, betas (0.9, 0.999), clip 10; EMA as Self-Forcing's.
  c.optim = ml_collections.ConfigDict(dict(
      lr=2e-6, b1=0.9, b2=0.999, weight_decay=0.01, eps=1e-8, clip_norm=10.0, warmup_steps=0, grad_accum=1,
      ema_decay=0.99, ema_start=200))
  c.train = ml_collections.ConfigDict(dict(
      steps=3000, seed=0, mesh=dict(data=1, fsdp=-1), log_every=10, checkpoint_every=200, keep_last=3,
      keep_every=1000, export_every=1000))
  if variant == "tiny":
    make_tiny(c)
  elif variant:
    raise ValueError(f"configs/ode_init.py: unknown variant {variant!r}; use '' or 'tiny'")
  return c


def make_tiny(c: ml_collections.ConfigDict) -> None:
  """Tiny random models in float32, 8x8 latents of 6 frames (2 chunks), 8 Euler steps: CPU in seconds."""
  for dit in (c.model, c.teacher):
    dit.update(dict(preset="tiny", checkpoint="", dtype="float32", remat_policy="none", attention_backend="xla"))
  c.text.update(dict(encoder="", tokenizer="", text_len=16))
  c.ode_pairs.update(dict(num_steps=8, keep=(0, 2, 4, 6, 8), records_per_shard=4))
  c.data.update(dict(num_frames=6, latent_hw=(8, 8), batch_size=4))
  c.optim.update(dict(lr=1e-3, ema_start=0))
  c.train.update(dict(steps=20, log_every=1, checkpoint_every=5, keep_last=2, keep_every=0, export_every=0))
  c.train.mesh.update(dict(data=-1, fsdp=1))
