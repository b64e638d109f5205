"""`t5pipe <command> [flags]`: dispatch to the command modules.

Each command module exposes `main(argv: list[str]) -> int` and parses its own
flags; commands import lazily so `t5pipe --help` stays fast.
"""

from __future__ import annotations

import importlib
import os
import sys

from t5pipe.errors import EXIT_BAD_INPUT, UserInputError
from t5pipe.gin_setup import explain_undefined_macro

COMMANDS = {
    "train": ("t5pipe.train", "train or fine-tune a model (gin-configured)"),
    "eval": ("t5pipe.evaluate", "evaluate a checkpoint on a task or mixture"),
    "infer": ("t5pipe.infer", "decode inputs from a task split or a text file"),
    "convert": ("t5pipe.convert", "import from / export to Hugging Face"),
    "tasks": ("t5pipe.task_browser", "list registered tasks, show examples"),
}

USAGE = (
    "usage: t5pipe {"
    + ",".join(COMMANDS)
    + "} [flags]   (t5pipe COMMAND --help)\n\n"
    + "\n".join(f"  {name:<8} {doc}" for name, (_, doc) in COMMANDS.items())
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"t5pipe: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    _hide_gpus_from_tensorflow()
    module = importlib.import_module(COMMANDS[command][0])
    try:
        return module.main(rest) or 0
    except (UserInputError, TypeError) as error:
        if isinstance(error, TypeError):
            explained = explain_undefined_macro(error)
            if explained is None:
                raise
            error = explained
        if os.environ.get("T5PIPE_DEBUG"):
            raise
        print(f"t5pipe {command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _hide_gpus_from_tensorflow() -> None:
    """TensorFlow (under seqio) would otherwise grab all GPU memory before JAX."""
    # TF's C++ INFO/WARNING lines (CPU instruction sets, CUDA stubs) are noise for
    # t5pipe's users; its errors still show. Users may set the variable themselves.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
    except Exception:  # noqa: BLE001 - TF missing or already initialised: nothing to hide
        pass


if __name__ == "__main__":
    sys.exit(main())
