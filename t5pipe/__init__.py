"""t5pipe: T5 pretraining, fine-tuning, evaluation and inference on JAX/Flax."""

__version__ = "0.1.0"
