"""Training data: prompts with their cached umT5 embeddings, and the teacher's ODE-pair shards."""
