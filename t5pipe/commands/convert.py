"""`t5pipe convert`: Hugging Face T5 folders and t5x checkpoints <-> self-describing
t5pipe checkpoints.

    t5pipe convert --from_hf DIR --out CKPT [--scan_layers] [--dtype bfloat16]
                   [--vocab byte|SPM_FILE] [--extra_ids N] [--overwrite]
    t5pipe convert --to_hf --checkpoint CKPT --out DIR [--dtype float32|bfloat16|float16]
                   [--overwrite]                  (a LoRA run's CKPT: adapters merged)
    t5pipe convert --to_hf --adapter_only --checkpoint LORA_CKPT --out DIR [--overwrite]
    t5pipe convert --from_hf_adapter PEFT_DIR --checkpoint BASE_CKPT --out ADAPTER_DIR
    t5pipe convert --from_t5x DIR --out CKPT [--gin_file MODEL.gin] [--vocab SPM|byte]
    t5pipe convert --to_t5x --checkpoint CKPT --out DIR [--overwrite]

The conversions themselves are `t5pipe.hf.convert`, `t5pipe.hf.peft` (adapters) and
`t5pipe.t5x.importing`; the last line on stdout is the path written.
"""

from __future__ import annotations

import argparse
from typing import Any

from t5pipe import gin_setup
from t5pipe.model_config import DTYPES


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="t5pipe convert",
        description="Import a Hugging Face T5 folder or a t5x checkpoint, or export one.",
    )
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from_hf", metavar="DIR", help="Hugging Face T5 folder to import")
    direction.add_argument("--to_hf", action="store_true", help="export --checkpoint to --out")
    direction.add_argument(
        "--from_t5x", metavar="DIR", help="t5x checkpoint_<step> folder (or MODEL_DIR) to import"
    )
    direction.add_argument(
        "--from_hf_adapter",
        metavar="DIR",
        help="Hugging Face PEFT LoRA folder to import as a t5pipe adapter folder (--out) for "
        "the base --checkpoint",
    )
    direction.add_argument(
        "--to_t5x", action="store_true", help="export --checkpoint to --out in the T5X format"
    )
    parser.add_argument(
        "--checkpoint",
        metavar="CKPT",
        help="t5pipe checkpoint to export (--from_hf_adapter: the base model)",
    )
    parser.add_argument(
        "--adapter_only",
        action="store_true",
        help="--to_hf of a LoRA run's checkpoint: only its adapters, as a PEFT folder",
    )
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
    export = args.to_hf or args.to_t5x
    if export and not args.checkpoint:
        parser.error(f"--{'to_hf' if args.to_hf else 'to_t5x'} needs --checkpoint CKPT")
    if args.from_hf_adapter and not args.checkpoint:
        parser.error("--from_hf_adapter needs --checkpoint BASE_CKPT (the model it adapts)")
    if not export and args.checkpoint and not args.from_hf_adapter:
        parser.error("--checkpoint goes with --to_hf / --to_t5x; an import reads DIR")
    if args.adapter_only and not args.to_hf:
        parser.error("--adapter_only goes with --to_hf")
    if args.adapter_only and args.dtype:
        parser.error("--adapter_only writes float32 adapters; drop --dtype")
    if args.from_t5x and (args.dtype or args.extra_ids is not None):
        parser.error("--dtype and --extra_ids apply to --from_hf and --to_hf")
    if args.from_t5x and (args.gin_bindings or args.gin_dot_bindings):
        parser.error("--from_t5x takes the model from --gin_file (or the run's config.gin)")
    if export or args.from_hf_adapter:
        model_flags = ("scan_layers", "vocab", "extra_ids", "gin_file", "gin_bindings")
        for flag in model_flags + (("dtype",) if args.from_hf_adapter else ()):
            if getattr(args, flag) not in (None, False, []):
                parser.error(f"--{flag} applies to --from_hf / --from_t5x imports only")
        if args.gin_dot_bindings:
            parser.error("--gin.NAME=VALUE flags apply to --from_hf / --from_t5x imports only")
    if args.extra_ids is not None and args.extra_ids < 0:
        parser.error(f"--extra_ids must be >= 0, got {args.extra_ids}")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.from_t5x or args.to_t5x:
        print(_t5x(args))
        return 0
    from t5pipe.hf.convert import export_hf, import_hf

    if args.adapter_only or args.from_hf_adapter:
        from t5pipe.hf import peft

        if args.adapter_only:
            out = peft.export_adapter(args.checkpoint, args.out, args.overwrite)
        else:
            out = peft.import_adapter(
                args.from_hf_adapter, args.checkpoint, args.out, args.overwrite
            )
    elif args.to_hf:
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


def _t5x(args: argparse.Namespace):
    from t5pipe.t5x.importing import export_t5x, import_t5x

    if args.to_t5x:
        return export_t5x(args.checkpoint, args.out, overwrite=args.overwrite)
    return import_t5x(
        args.from_t5x, args.out, gin_files=args.gin_file, vocab=args.vocab,
        scan_layers=args.scan_layers, overwrite=args.overwrite,
    )  # fmt: skip


def model_fields_bound_in_gin(args: argparse.Namespace) -> dict[str, Any]:
    """{field: value} for every T5Config field the gin flags bind (macros resolved)."""
    if not (args.gin_file or args.gin_bindings or args.gin_dot_bindings):
        return {}
    import gin

    gin_setup.parse_command_gin(args, args.gin_dot_bindings)
    return dict(gin.get_bindings("T5Config"))
