"""t5pipe: a T5 training pipeline on JAX/Flax, seqio and gin."""

from setuptools import find_packages, setup

setup(
    name="t5pipe",
    version="0.1.0",
    description="T5 pretraining, fine-tuning, evaluation and inference on JAX/Flax, seqio, gin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # `tasks/` ships as `t5pipe.tasks` so that it cannot collide with another package.
    # gin/ ships as `t5pipe.gin_configs` so that it is on the gin search path
    # however t5pipe is installed (see t5pipe/gin_setup.py).
    # Subpackages of t5pipe/ (commands, hf, ...) are found, so a new one ships without edits.
    packages=[
        "t5pipe",
        *(f"t5pipe.{name}" for name in find_packages("t5pipe")),
        "t5pipe.tasks",
        "t5pipe.gin_configs",
    ],
    package_dir={"t5pipe": "t5pipe", "t5pipe.tasks": "tasks", "t5pipe.gin_configs": "gin"},
    package_data={"t5pipe.gin_configs": ["*.gin", "*/*.gin", "*/*/*.gin"]},
    # Ranges installed and tested together (Python 3.11, CPU).
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "seqio>=0.0.20,<0.1",
        "tensorflow>=2.21,<2.22",
        "tensorflow-text>=2.21,<2.22",
        "tensorflow-datasets>=4.9.10,<4.10",
        "gin-config>=0.5.0,<0.6",
        "sentencepiece>=0.2.3,<0.3",
        "safetensors>=0.8.0,<0.9",
        "numpy>=2.4,<2.5",
        "scikit-learn>=1.9,<1.10",
        "scipy>=1.17,<1.18",
        "rouge-score>=0.1.2,<0.2",
        "sacrebleu>=2.6,<2.7",
        "tensorboardX>=2.6.5,<2.7",
        "etils[epath]>=1.15,<1.16",
        "tqdm>=4.70,<5",
    ],
    extras_require={
        # Parity tests against Hugging Face (transformers, PEFT); install torch as
        # `torch==2.13.0` (CPU build).
        "test": [
            "pytest>=9.2,<10",
            "pytest-xdist>=3.8,<3.9",
            "ruff>=0.17,<0.18",
            "transformers>=5.23,<5.24",
            "peft>=0.21.2,<0.22",
            "accelerate>=1.15,<1.16",
        ],
    },
    entry_points={"console_scripts": ["t5pipe=t5pipe.cli:main"]},
)
