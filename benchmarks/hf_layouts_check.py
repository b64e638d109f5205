"""Hugging Face output-layer layouts against the installed transformers (not a CI test:
CI pins one version; run this with another on the path, e.g. 5.24).

    PYTHONPATH=/path/to/transformers-5.24 python -m benchmarks.hf_layouts_check

Saves random tiny T5 models with the installed transformers (T5.1.1 made from scratch:
tied and unscaled; the same with its own output layer, as fine-tuned from the hub; T5
1.0), imports each with `t5pipe convert --from_hf`, and prints the largest relative
difference of t5pipe's logits from transformers', and whether the exported folder
loads back in this transformers to bit-identical logits.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import torch
import transformers


def main() -> int:
    from t5pipe import checkpoint_format, cli
    from t5pipe.model import T5, shift_right

    rng = np.random.default_rng(0)
    enc = rng.integers(2, 384, (2, 11))
    dec = rng.integers(2, 384, (2, 7))
    dec_in = np.asarray(shift_right(jnp.asarray(dec)))
    shape = dict(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=2,
                 relative_attention_num_buckets=8, relative_attention_max_distance=20,
                 decoder_start_token_id=0, dropout_rate=0.0)  # fmt: skip
    layouts = {
        "t5_1_1_from_scratch": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
        "t5_1_1_own_lm_head": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
        "t5_1_0": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    }
    print(f"transformers {transformers.__version__}")
    failed = False
    with tempfile.TemporaryDirectory() as root:
        for name, kind in layouts.items():
            torch.manual_seed(0)
            hf = transformers.T5ForConditionalGeneration(
                transformers.T5Config(**shape, **kind)
            ).eval()
            if name == "t5_1_1_own_lm_head":
                hf.lm_head.weight = torch.nn.Parameter(torch.randn_like(hf.lm_head.weight) * 0.05)
            folder, ckpt, out = (Path(root) / f"{name}_{s}" for s in ("hf", "ckpt", "exported"))
            hf.save_pretrained(folder)
            (folder / "tokenizer_config.json").write_text(
                json.dumps({"tokenizer_class": "ByT5Tokenizer", "extra_ids": 125})
            )
            saved = json.loads((folder / "config.json").read_text())
            with torch.no_grad():
                ref = hf(input_ids=torch.tensor(enc), decoder_input_ids=torch.tensor(dec_in))
            ref = ref.logits.numpy()
            assert cli.main(["convert", "--from_hf", str(folder), "--out", str(ckpt)]) == 0
            config = checkpoint_format.load_model_config(ckpt)
            params = checkpoint_format.load_params(ckpt)
            ours = np.asarray(
                T5(config).apply({"params": params}, jnp.asarray(enc), jnp.asarray(dec_in))
            )
            error = float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))
            assert (
                cli.main(["convert", "--to_hf", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
            )
            back = transformers.T5ForConditionalGeneration.from_pretrained(out).eval()
            with torch.no_grad():
                again = back(input_ids=torch.tensor(enc), decoder_input_ids=torch.tensor(dec_in))
            same = bool(np.array_equal(again.logits.numpy(), ref))
            failed |= error > 1e-5 or not same
            print(
                f"{name}: config tie_word_embeddings={saved.get('tie_word_embeddings')} "
                f"scale_decoder_outputs={saved.get('scale_decoder_outputs')}; import logits "
                f"relative error {error:.2e}; export reloaded bit-identical logits: {same}"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
