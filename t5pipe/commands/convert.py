"""`t5pipe convert`: Hugging Face T5 folders <-> self-describing t5pipe checkpoints.

    t5pipe convert --from_hf DIR --out CKPT [--scan_layers] [--dtype bfloat16]
                   [--vocab byte|SPM_FILE] [--extra_ids N] [--overwrite]
    t5pipe convert --to_hf --checkpoint CKPT --out DIR [--dtype float32|bfloat16|float16]
                   [--overwrite]

The conversion itself is `t5pipe.hf.convert`; the last line on stdout is the path written.
"""

from __future__ import annotations

import argparse
from typing import Any

from t5pipe import gin_setup
from t5pipe.model_config import DTYPES


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="t5pipe convert",
        description="Import a Hugging Face T5 folder as a t5pipe checkpoint, or export one.",
    )
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from_hf", metavar="DIR", help="Hugging Face T5 folder to import")
    direction.add_argument("--to_hf", action="store_true", help="export --checkpoint to --out")
    parser.add_argument("--checkpoint", metavar="CKPT", help="t5pipe checkpoint to export")
    parser.add_argument("--out", required=True, help="checkpoint (import) or folder (export)")
    parser.add_argument(
        "--scan_layers", action="store_true", help="import: store layers stacked for scan"
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        help="import: activation dtype recorded in the model config (parameters stay float32); "
        "export: dtype of the written tensors (default float32)",
    )
    parser.add_argument("--vocab", help="import: 'byte' or a SentencePiece model file")
    parser.add_argument("--extra_ids", type=int, help="import: sentinel ids after the pieces")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing checkpoint / exported files"
    )
    gin_setup.add_gin_flags(parser)
    parser.epilog += (
        " With --from_hf, gin may set how the model runs (T5Config.dtype, dropout_rate, "
        "scan_layers, remat_policy, attention_impl); shapes come from config.json and "
        "gin shapes must agree with them."
    )
    argv, dot_bindings = gin_setup.split_gin_dot_flags(argv)
    args = parser.parse_args(argv)
    args.gin_dot_bindings = dot_bindings
    if args.to_hf and not args.checkpoint:
        parser.error("--to_hf needs --checkpoint CKPT")
    if args.from_hf and args.checkpoint:
        parser.error("--checkpoint goes with --to_hf; --from_hf reads DIR and writes --out")
    if args.to_hf:
        for flag in ("scan_layers", "vocab", "extra_ids", "gin_file", "gin_bindings"):
            if getattr(args, flag) not in (None, False, []):
                parser.error(f"--{flag} applies to --from_hf only")
        if args.gin_dot_bindings:
            parser.error("--gin.NAME=VALUE flags apply to --from_hf only")
    if args.extra_ids is not None and args.extra_ids < 0:
        parser.error(f"--extra_ids must be >= 0, got {args.extra_ids}")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from t5pipe.hf.convert import export_hf, import_hf

    if args.to_hf:
        out = export_hf(args.checkpoint, args.out, args.dtype or "float32", args.overwrite)
    else:
        out = import_hf(
            args.from_hf,
            args.out,
            scan_layers=args.scan_layers,
            dtype=args.dtype,
            vocab=args.vocab,
            extra_ids=args.extra_ids,
            overwrite=args.overwrite,
            gin_bound=model_fields_bound_in_gin(args),
        )
    print(out)
    return 0


def model_fields_bound_in_gin(args: argparse.Namespace) -> dict[str, Any]:
    """{field: value} for every T5Config field the gin flags bind (macros resolved)."""
    if not (args.gin_file or args.gin_bindings or args.gin_dot_bindings):
        return {}
    import gin

    gin_setup.parse_command_gin(args, args.gin_dot_bindings)
    return dict(gin.get_bindings("T5Config"))
