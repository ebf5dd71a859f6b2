"""Attention: the one dispatching entry point (dispatch.py), the streaming hybrid attention of one layer
(hybrid.py) and attention over growing prefixes (prefix.py). The models import from here; nothing here
imports a model or the streaming engine."""
from hybrid_forcing_jax.attention.dispatch import (SPARSE_BACKENDS, attention, available_backends, register_backend,
                                                   resolve_backend)

__all__ = ["SPARSE_BACKENDS", "attention", "available_backends", "register_backend", "resolve_backend"]
