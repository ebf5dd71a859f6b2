"""Stage dmd, phase 1 of Hybrid Forcing's decoupled distillation (paper Sec. 3.5): Self-Forcing's DMD
with its dense streaming setting (no sink, a rolling 21-frame window, absolute RoPE, no linear memory,
dense softmax, the warped 4-step schedule), from the ODE-init checkpoint. `sample --config=` reads
`stream`; the trainer reads the rest (docs/training.md, "DMD").

  python -m hybrid_forcing_jax.train --config=configs/self_forcing.py --workdir=runs/self_forcing
  python -m hybrid_forcing_jax.train --config=configs/self_forcing.py:tiny --workdir=/tmp/sf   # CPU

model.checkpoint: a converted generator folder, ours (`runs/ode_init/export/<step>`) or Self-Forcing's
`ode_init.pt` converted (python -m convert). The teacher is Wan2.1-T2V-14B as in Self-Forcing; on one
GPU use the 1.3B as a stand-in: --config.teacher.preset=wan_1_3b --config.teacher.checkpoint=ckpt/dit_1_3b.
`:tiny` swaps in tiny random models, 8x8 latents and a few steps (tests, CPU).
"""
import ml_collections

from configs import ode_init


def dense_stream() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      chunk_frames=3, sink_frames=0, window_frames=21, rope="absolute", rope_cap=21,
      linear=False, linear_eps=1e-6, sparse_ratio=None, keep_sink=False, keep_own_chunk=False, sparse_backend="auto",
      denoising_steps=(1000, 750, 500, 250), warp_denoising_steps=True, shift=5.0, num_train_timesteps=1000))


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stage = "dmd"
  c.model = ode_init.dit_section("ckpt/ode_init", remat_policy="full")
  c.teacher = ode_init.dit_section("ckpt/dit_14b", remat_policy="none")
  c.teacher.preset = "wan_14b"
  # DMD's fake score starts from the base model (Self-Forcing; training_spec.md 2). Its backward keeps the
  # attention kernels' outputs instead of rerunning them: 9% faster critic updates for 5 GiB more in the critic's
  # program, whose peak stays under the generator's (docs/benchmarks.md, "Where the DMD step's time goes").
  c.critic = ode_init.dit_section("ckpt/dit_1_3b", remat_policy="attention_saveable")
  c.text = ml_collections.ConfigDict(dict(
      encoder="ckpt/umt5", tokenizer="Wan2.1-T2V-1.3B/google/umt5-xxl", text_len=512, cache_dir="data/text_cache",
      negative_prompt=ode_init.WAN_NEGATIVE_PROMPT))
  c.stream = dense_stream()
  # Data-free: prompts only (Self-Forcing's vidprom_filtered_extended.txt); the paper's global batch 32.
  c.data = ml_collections.ConfigDict(dict(
      prompts="data/vidprom_filtered_extended.txt", num_frames=21, latent_hw=(60, 104), batch_size=32, seed=0,
      num_workers=0))
  # Self-Forcing: AdamW betas (0, 0.999), weight decay 0.01, clip 10, constant LR 2e-6 (generator) / 4e-7
  # (critic); EMA 0.99 from step 200 (steps count critic updates).
  c.optim = ml_collections.ConfigDict(dict(
      lr=2e-6, b1=0.0, b2=0.999, weight_decay=0.01, eps=1e-8, clip_norm=10.0, warmup_steps=0, grad_accum=1,
      ema_decay=0.99, ema_start=200))
  c.train = ml_collections.ConfigDict(dict(
      steps=1000, seed=0, mesh=dict(data=1, fsdp=-1), log_every=10, checkpoint_every=50, keep_last=3,
      keep_every=200, export_every=200))
  c.dmd = ml_collections.ConfigDict(dict(
      critic_lr=4e-7, generator_every=5, guidance=4.0, t_min=20.0, t_max=980.0, min_frames=21, max_frames=21,
      context_noise=0.0, vae="ckpt/vae"))
  # Off in phase 1 (weight 0); phase 2 (configs/hybrid.py) turns it on.
  c.regulariser = ml_collections.ConfigDict(dict(
      weight=0.0, source="online", records="data/teacher_rollouts", num_steps=25, shift=5.0, guidance=3.5, seed=0,
      records_per_shard=64))
  if variant == "tiny":
    make_tiny(c)
  elif variant:
    raise ValueError(f"configs/self_forcing.py: unknown variant {variant!r}; use '' or 'tiny'")
  return c


def make_tiny(c: ml_collections.ConfigDict) -> None:
  """Tiny random models in float32 (XLA attention), 8x8 latents, a 6-frame loss window, 2-step teacher."""
  for dit in (c.model, c.teacher, c.critic):
    dit.update(dict(preset="tiny", checkpoint="", dtype="float32", remat_policy="none", attention_backend="xla"))
  c.stream.sparse_backend = "xla"
  c.text.update(dict(encoder="", tokenizer="", text_len=16))
  c.data.update(dict(num_frames=6, latent_hw=(8, 8), batch_size=2))
  c.dmd.update(dict(min_frames=6, max_frames=6, vae=""))
  c.regulariser.update(dict(num_steps=2, records_per_shard=2))
  c.optim.update(dict(lr=1e-4, ema_start=0))
  c.dmd.critic_lr = 1e-4
  c.train.update(dict(steps=10, log_every=1, checkpoint_every=5, keep_last=2, keep_every=0, export_every=0))
  c.train.mesh.update(dict(data=-1, fsdp=1))
