"""A procedural video world for training and evaluating the whole pipeline without downloads: shapes
moving over a background with captions (grammar, scene, render), a lossless pixel codec in place of
the VAE (codec), a word tokenizer and tiny text encoder (tokenizer, text), a grain dataset (dataset)
and a detector that reads colour, shape and motion back from a video (detect). See docs/world.md.
"""
