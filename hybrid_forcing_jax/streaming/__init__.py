"""Streaming (chunk-autoregressive) inference: explicit state, hybrid attention, few-step sampler."""
