"""Smoke test of the benchmark harness (no timing assertions), and its one correctness
property: the training step compiles exactly once per run."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from testlib import REPO_ROOT

# benchmarks/ is a top-level folder of the checkout, not part of the installed package.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
from benchmarks.measure import compile_log  # noqa: E402

TINY = [
    "vocab_size=128", "d_model=32", "d_kv=8", "d_ff=64", "num_heads=4",
    "num_encoder_layers=2", "num_decoder_layers=2",
    "relative_attention_num_buckets=8", "relative_attention_max_distance=20",
]  # fmt: skip


def test_compile_log_counts_every_compilation_of_a_function():
    def benchmark_probe(x):
        return x * 2

    probe = jax.jit(benchmark_probe)
    with compile_log() as log:
        probe(jnp.ones(3))
        probe(jnp.ones(3))  # cache hit: no compilation
        probe(jnp.ones(4))  # new shape: a second compilation
    assert log.count("benchmark_probe") == 2
    assert log.seconds["benchmark_probe"] > 0


def test_harness_writes_every_figure_and_the_step_compiles_once(tmp_path, data_dir):
    out = tmp_path / "bench.json"
    env = {
        **os.environ,
        "T5PIPE_GLUE_DIR": str(data_dir / "glue"),
        "T5PIPE_VOCAB": str(data_dir / "vocab" / "t5_spiece.model"),
    }
    command = [
        sys.executable, "-m", "benchmarks.run", "--models", "small",
        *[arg for field in TINY for arg in ("--config", field)],
        "--batch_size", "8", "--input_length", "16", "--target_length", "8",
        "--steps", "2", "--warmup", "1", "--decode_repeats", "1", "--num_beams", "2",
        "--data_batches", "2", "--text_file", str(data_dir / "text" / "tinyshakespeare.txt"),
        "--compare_hf", "--hf_threads", "1", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| small | train tokens/s" in done.stdout

    report = json.loads(out.read_text())
    assert report["complete"] is True
    assert report["matmul_peak"]["flops_per_second"] > 0
    model = report["models"]["small"]
    assert model["config"]["d_model"] == 32 and model["config"]["dropout_rate"] == 0.0
    train = model["train"]
    # The correctness property: one executable for every step of the run.
    assert train["compilations"] == 1
    assert train["jit_cache_size"] == 1
    assert len(train["step_time"]["samples_s"]) == 2
    for key in ("tokens_per_second", "mfu", "compile_s", "flops_per_step",
                "peak_host_memory_bytes", "final_loss"):  # fmt: skip
        assert train[key] > 0, key
    assert set(model["decode"]) == {"greedy", "beam2"}
    for figures in model["decode"].values():
        assert figures["tokens_per_second"] > 0
        assert figures["recompilations"] == 0
        assert figures["rows_ended_early"] == 0  # EOS suppressed: full-length decodes
    hf = model["hf"]
    assert hf["train"]["tokens_per_second"] > 0
    # Same weights and inputs on both sides: the decodes agree.
    assert hf["generate"]["greedy"]["same_tokens_as_t5pipe"] == 1.0
    assert hf["generate"]["beam2"]["generated_length"] == 8
    assert set(model["ratios"]) == {
        "train_tokens_per_second",
        "greedy_tokens_per_second",
        "beam2_tokens_per_second",
    }
    assert set(report["data"]) == {"glue", "span_corruption"}
    assert "glue_cola_v002" in report["data"]["glue"]["tasks"]
    for figures in report["data"].values():
        assert figures["examples_per_second"] > 0
    assert set(model["data_vs_training"]) == {"glue", "span_corruption"}


def test_lora_speed_trains_only_the_adapters_and_compiles_once():
    from benchmarks import lora_speed

    common = [arg for field in TINY for arg in ("--config", field)]
    common += ["--batch_size", "4", "--input_length", "16", "--target_length", "8",
               "--steps", "2", "--warmup", "1", "--rank", "8", "--out", "unused.json"]  # fmt: skip
    figures = {}
    for mode in ("full", "lora"):
        args = lora_speed.parse_args([*common, "--mode", mode])
        args.rules = "standard"
        figures[mode] = lora_speed.measure(args)  # raises if the step compiles twice
    full, adapted = figures["full"], figures["lora"]
    assert full["compilations"] == adapted["compilations"] == 1
    assert full["trainable_parameters"] == full["parameters"]
    # Query and value of 6 attentions (2 encoder self, 2 decoder self, 2 cross):
    # A [32, 8] and B [8, 4 x 8] each.
    assert adapted["trainable_parameters"] == 12 * (32 * 8 + 8 * 32)
    assert adapted["parameters"] == full["parameters"] + adapted["trainable_parameters"]
    # The frozen base carries no optimizer state: only the adapters' factored moments.
    assert 0 < adapted["optimizer_state_bytes"] < full["optimizer_state_bytes"] / 5
    assert adapted["final_loss"] > 0 and len(adapted["step_time"]["samples_s"]) == 2


def test_dtype_list_runs_each_model_per_dtype_and_rejects_unknown_ones(capsys):
    from benchmarks import run

    args = run.parse_args(["--out", "x.json", "--dtype", "float32, bfloat16"])
    assert args.dtypes == ["float32", "bfloat16"]
    assert [run.model_key("small", d) for d in args.dtypes] == ["small", "small bfloat16"]
    with pytest.raises(SystemExit) as exit_:
        run.parse_args(["--out", "x.json", "--dtype", "float16"])
    assert exit_.value.code == 2
    assert "--dtype 'float16'" in capsys.readouterr().err
