"""Peak memory of `t5pipe convert --from_hf` against the checkpoint's size.

    python -m benchmarks.import_memory --family t5gemma --workdir /tmp/import_memory

Builds a Hugging Face folder with transformers (random weights, float32, safetensors)
of the shapes below, runs `/usr/bin/time -v t5pipe convert --from_hf DIR --out CKPT
--vocab byte` on it in a fresh process, and prints the command's peak resident memory
(`Maximum resident set size`, the whole process: Python, JAX and the libraries
included), the size of the weights on disk and their ratio. The folders are deleted
afterwards. Needs about 3x the checkpoint in free memory to build it, and 2x on disk.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

# ~0.6B parameters each (2.3-2.5 GB in float32): the issue asks for >= 2 GB.
SHAPES = {
    "t5gemma": dict(
        vocab_size=65536,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=12,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=128,
    ),
    "t5": dict(
        vocab_size=32128,
        d_model=1024,
        d_ff=2816,
        d_kv=64,
        num_heads=16,
        num_layers=16,
        num_decoder_layers=16,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    ),
}


def build(family: str, folder: Path) -> None:
    """Writes a randomly initialised model of SHAPES[family] to `folder`."""
    import torch
    import transformers

    torch.manual_seed(0)
    shape = SHAPES[family]
    if family == "t5gemma":
        stack = transformers.T5GemmaModuleConfig(**shape)
        config = transformers.T5GemmaConfig(
            encoder=stack.to_dict(), decoder=stack.to_dict(), vocab_size=shape["vocab_size"]
        )
        model = transformers.T5GemmaForConditionalGeneration(config)
    else:
        model = transformers.T5ForConditionalGeneration(transformers.T5Config(**shape))
    model.save_pretrained(folder, safe_serialization=True, max_shard_size="100GB")


def weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def measure(folder: Path, out: Path) -> dict[str, float]:
    """Runs the conversion in its own process under /usr/bin/time -v."""
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "t5pipe.cli", "convert"]
    command += ["--from_hf", str(folder), "--out", str(out), "--vocab", "byte"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"convert failed ({done.returncode}):\n{done.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time.*: ([\d:.]+)", done.stderr).group(1)
    weights = weights_bytes(folder)
    return {
        "weights_gb": weights / 1e9,
        "peak_rss_gb": rss_kb * 1024 / 1e9,
        "ratio": rss_kb * 1024 / weights,
        "checkpoint_on_disk_gb": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e9,
        "wall": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(SHAPES), default="t5gemma")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/import_memory"))
    args = parser.parse_args()
    folder, out = args.workdir / f"hf_{args.family}", args.workdir / f"ckpt_{args.family}"
    try:
        build(args.family, folder)
        print(json.dumps({"family": args.family, **measure(folder, out)}))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
