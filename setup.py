"""hybrid_forcing_jax: streaming text-to-video (Hybrid Forcing on Wan2.1) in JAX/Flax with Pallas kernels."""
from pathlib import Path

from setuptools import find_packages, setup

requirements = [
    line.strip() for line in Path(__file__).with_name("requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="hybrid_forcing_jax",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11",
    # configs: the run configs that `sample` (and `train`) import as their defaults.
    packages=find_packages(include=["hybrid_forcing_jax*", "kernels*", "convert*", "configs"]),
    # The shipped world model (hybrid_forcing_jax/world/model: dit/, text/, codec/), `sample`'s default.
    package_data={"hybrid_forcing_jax.world": ["model/**/*"]},
    install_requires=requirements,
    extras_require={
        # Reading PyTorch `.pt` checkpoints (Self-Forcing / Hybrid Forcing, Wan's VAE and umT5) needs torch.
        "torch": ["torch>=2.1"],
        # Test-only: the reference implementations the parity tests compare against.
        "test": ["pytest>=8", "diffusers>=0.35", "torch==2.13.0", "sentencepiece>=0.2", "imageio>=2.30"],
        # NVIDIA GPUs: jax-triton for the Pallas Triton kernels' GPU path.
        "gpu": ["jax-triton>=0.3"],
    },
)
