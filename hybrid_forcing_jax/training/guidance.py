"""Classifier-free guidance of the bidirectional teacher in x0 space (training_spec.md 1-2):

  x0 = x0_u + scale (x0_c - x0_u),   x0_* = x_t - sigma v_*   (flow.x0_from_velocity),

with the conditional and unconditional (negative-prompt) passes batched into one forward. Since x0 is
affine in v, this equals Wan's guidance on the velocity, v_u + scale (v_c - v_u). Used by
make_ode_pairs, DMD's real score and the regulariser's teacher rollout.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from hybrid_forcing_jax import flow
from hybrid_forcing_jax.dit import WanDiT


def text_kv(model: WanDiT, params, context):
  """Every layer's cross-attention (k, v), each [num_layers, B, Lt, H, D], for umT5 context [B, Lt, text_dim]."""
  return model.apply({"params": params}, context, method=WanDiT.text_kv)


def cfg_x0(model: WanDiT, params, x_t, t, cond_kv, uncond_kv, scale):
  """Guided x0, float32 [B, F, h, w, C], from x_t [B, F, h, w, C] at timesteps t ([B] or [B, F], in
  [0, 1000]). cond_kv: `text_kv` of the prompts (batch B); uncond_kv: of the negative prompt (batch B
  or 1, broadcast). The model runs its default bidirectional layout."""
  b, f = x_t.shape[:2]
  t = jnp.broadcast_to(jnp.asarray(t, jnp.float32).reshape(b, -1), (b, f))
  uncond_kv = jax.tree_util.tree_map(lambda u: jnp.broadcast_to(u, u.shape[:1] + (b,) + u.shape[2:]), uncond_kv)
  kv = jax.tree_util.tree_map(lambda c, u: jnp.concatenate([c, u], axis=1), cond_kv, uncond_kv)
  x2, t2 = jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t])
  v = model.apply({"params": params}, x2, t2, text_kv=kv)
  x0 = flow.x0_from_velocity(x2.astype(jnp.float32), v.astype(jnp.float32), t2 / flow.NUM_TRAIN_TIMESTEPS)
  x0_c, x0_u = x0[:b], x0[b:]
  return x0_u + scale * (x0_c - x0_u)
