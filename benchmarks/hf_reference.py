"""The same work in Hugging Face transformers (PyTorch on CPU: float32, or bfloat16
under torch.autocast), for the ratios.

The PyTorch model gets t5pipe's parameters (through `t5pipe.hf.t5`), so both
sides run the same network on the same batches:

- training step: forward with `labels` (HF shifts them right itself), backward,
  optimizer step, zero grads; Adafactor as `transformers.optimization.Adafactor`
  (scale_parameter=True, relative_step=False, warmup_init=False, fixed lr: the
  family of t5pipe's T5 Adafactor) or `torch.optim.AdamW` after global-norm
  clipping at 1.0 (as t5pipe's `adamw`);
- `generate`: greedy and beam search on the same inputs with
  max_new_tokens = max_decode_length (EOS cannot win, see decode_speed.py, so both
  sides decode every position).

torch uses every core (`torch.set_num_threads(os.cpu_count())`) unless told otherwise:
on a machine shared with other busy processes, OpenMP's spinning barriers make 2
threads on 2 cores many times slower than 1 thread (measure on a quiet machine).
"""

from __future__ import annotations

import contextlib
import os
import time

import numpy as np

from benchmarks.measure import peak_host_memory_bytes, summarize
from t5pipe.hf import t5 as hf_mapping
from t5pipe.model_config import T5Config

# HF ties these to `shared`; t5pipe's mapping names only `shared.weight`.
_TIED_NAMES = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}


def hf_model(config: T5Config, params, threads: int | None = None):
    """A `T5ForConditionalGeneration` holding `params` (float32, unscanned layout);
    torch runs on `threads` threads (default: every core)."""
    import torch
    import transformers

    torch.set_num_threads(threads or os.cpu_count() or 1)
    if config.scan_layers:
        params = hf_mapping.unscan_layout(params, config)
    model = transformers.T5ForConditionalGeneration(
        transformers.T5Config(**hf_mapping.t5config_to_hf(config))
    )
    if not config.tie_word_embeddings:
        # transformers >= 5 ties the output layer at construction; T5.1.1 has its own.
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    state = {
        name: torch.from_numpy(np.array(array, np.float32))
        for name, array in hf_mapping.params_to_hf(params, config)
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - _TIED_NAMES:
        raise RuntimeError(
            f"HF reference model: missing {sorted(set(missing) - _TIED_NAMES)}, "
            f"unexpected {sorted(unexpected)}"
        )
    return model


def _optimizer(model, name: str, learning_rate: float):
    import torch
    from transformers.optimization import Adafactor

    if name == "adafactor":
        return Adafactor(
            model.parameters(),
            lr=learning_rate,
            scale_parameter=True,
            relative_step=False,
            warmup_init=False,
            clip_threshold=1.0,
        )
    if name == "adamw":
        return torch.optim.AdamW(
            model.parameters(), lr=learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01
        )
    raise ValueError(f"--optimizer={name!r}: expected 'adafactor' or 'adamw'")


def measure_hf_train_step(
    model,
    host_batches: list[dict[str, np.ndarray]],
    *,
    optimizer_name: str,
    learning_rate: float,
    steps: int,
    warmup: int,
    autocast: bool = False,
) -> dict:
    """Times `steps` training steps after `warmup`, on t5pipe's host batches
    (encoder_input_tokens, decoder_target_tokens: all tokens real, no padding). With
    `autocast` the forward runs under torch.autocast("cpu", bfloat16) (the backward
    follows the forward's dtypes, as autocast prescribes)."""
    import torch

    model.train()
    optimizer = _optimizer(model, optimizer_name, learning_rate)
    times = []
    for i in range(warmup + steps):
        batch = host_batches[i % len(host_batches)]
        start = time.perf_counter()
        input_ids = torch.from_numpy(batch["encoder_input_tokens"].astype(np.int64))
        labels = torch.from_numpy(batch["decoder_target_tokens"].astype(np.int64))
        with _autocast(autocast):
            loss = model(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels
            )
        loss.loss.backward()
        if optimizer_name == "adamw":
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    batch_size, input_length = host_batches[0]["encoder_input_tokens"].shape
    target_length = host_batches[0]["decoder_target_tokens"].shape[1]
    step_s = summarize(times[warmup:])["median_s"]
    return {
        "step_time": summarize(times[warmup:]),
        "first_step_s": times[0],
        "tokens_per_second": batch_size * (input_length + target_length) / step_s,
        "target_tokens_per_second": batch_size * target_length / step_s,
        "examples_per_second": batch_size / step_s,
        "final_loss": float(loss.loss.detach()),
        "peak_host_memory_bytes": peak_host_memory_bytes(),
    }


def _autocast(enabled: bool):
    """torch.autocast("cpu", bfloat16) when enabled, else nothing."""
    import torch

    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=torch.bfloat16)


def measure_hf_generate(
    model,
    inputs: np.ndarray,
    *,
    num_beams: int,
    max_decode_length: int,
    repeats: int,
    autocast: bool = False,
) -> tuple[dict, np.ndarray]:
    """Times `repeats` `generate` calls after one warm-up call (under
    torch.autocast("cpu", bfloat16) with `autocast`).

    -> (figures, best sequences int64 [batch, max_decode_length], start token removed).
    """
    import torch

    model.eval()
    input_ids = torch.from_numpy(inputs.astype(np.int64))
    kwargs = dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_decode_length,
        num_beams=num_beams,
        do_sample=False,
    )

    def generate():
        with torch.inference_mode(), _autocast(autocast):
            return model.generate(**kwargs)

    start = time.perf_counter()
    generate()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        output = generate()
        times.append(time.perf_counter() - start)
    sequences = output[:, 1:].numpy()
    median = summarize(times)["median_s"]
    return {
        "num_beams": num_beams,
        "max_new_tokens": max_decode_length,
        "time": summarize(times),
        "first_call_s": first,
        "generated_length": int(sequences.shape[1]),
        "tokens_per_second": inputs.shape[0] * max_decode_length / median,
    }, sequences
