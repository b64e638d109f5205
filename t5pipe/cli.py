"""`t5pipe <command> [flags]`: dispatch to `t5pipe.commands.<command>`, and the one place
that turns errors into messages and exit codes.

Each command module exposes `main(argv: list[str]) -> int` and parses its own flags;
commands import lazily so `t5pipe --help` stays fast. Exit codes (t5pipe.errors):
0 finished, 1 failure while running, 2 bad command line / configuration / data,
65 stopped on a non-finite loss, 75 preempted (a checkpoint was saved; rerun) or
`train` interrupted by Ctrl-C before its loop (nothing saved), 130 other commands
interrupted by Ctrl-C.
Set T5PIPE_DEBUG=1 to get the traceback of any error; `--verbose` (anywhere on the
command line) or T5PIPE_LOG_LEVEL=debug shows every library's log lines
(`t5pipe.startup`). On a CPU-only host `train`, `eval` and `infer` re-execute once with
glibc malloc settings for XLA:CPU (`t5pipe.host_malloc`; T5PIPE_CPU_MALLOC=0: off).
"""

from __future__ import annotations

import importlib
import os
import sys

from t5pipe import host_malloc, startup
from t5pipe.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_PREEMPTED,
    T5pipeError,
    UserInputError,
    clean_message,
    network_failure,
)

COMMANDS = {
    "train": "train or fine-tune a model (gin-configured)",
    "eval": "evaluate a checkpoint on a task or mixture",
    "infer": "decode inputs from a task split or a text file",
    "convert": "import from / export to Hugging Face",
    "tasks": "list registered tasks, show examples",
}

USAGE = (
    "usage: t5pipe {"
    + ",".join(COMMANDS)
    + "} [flags] [--verbose]   (t5pipe COMMAND --help)\n\n"
    + "\n".join(f"  {name:<8} {doc}" for name, doc in COMMANDS.items())
    + "\n\n  --verbose  show every library's log lines (or T5PIPE_LOG_LEVEL=debug)"
)


# Commands that run XLA computations: on a CPU-only host they re-execute once with
# glibc malloc settings that keep XLA's per-step buffers mapped (`t5pipe.host_malloc`).
_XLA_COMMANDS = ("train", "eval", "infer")


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the process's own command line (not a call from Python code)
        argv = sys.argv[1:]
        if argv and argv[0] in _XLA_COMMANDS and "--help" not in argv and "-h" not in argv:
            host_malloc.reexec_with_cpu_malloc()
    verbose, argv = startup.verbose_requested(list(argv))
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else EXIT_BAD_INPUT
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"t5pipe: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return EXIT_BAD_INPUT
    startup.configure(verbose)
    try:
        module = importlib.import_module(f"t5pipe.commands.{command}")
        return module.main(rest) or 0
    except KeyboardInterrupt:
        # Inside its loop `train` turns Ctrl-C into a save and Preempted; here it came
        # before (start-up, restore, compile) or in another command.
        if os.environ.get("T5PIPE_DEBUG"):
            raise
        print(f"t5pipe {command}: {_interrupted(command)}", file=sys.stderr, flush=True)
        return EXIT_PREEMPTED if command == "train" else EXIT_INTERRUPTED
    except T5pipeError as error:
        if os.environ.get("T5PIPE_DEBUG"):
            raise
        if isinstance(error, UserInputError):
            print(f"t5pipe {command}: error: {clean_message(error)}", file=sys.stderr, flush=True)
        else:
            print(
                f"t5pipe {command}: {clean_message(error)} (exit code {error.exit_code})",
                file=sys.stderr,
                flush=True,
            )
        return error.exit_code
    except Exception as error:
        line = network_failure(error)  # one line, not TensorFlow's traceback
        if line is None or os.environ.get("T5PIPE_DEBUG"):
            raise
        print(f"t5pipe {command}: error: {line}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT


def _interrupted(command: str) -> str:
    if command == "train":
        return (
            "interrupted (Ctrl-C) outside the training loop (start-up, restore or compile): "
            "no checkpoint was saved for it and nothing was deleted; rerun the same command "
            f"to continue (exit code {EXIT_PREEMPTED})"
        )
    return f"interrupted (Ctrl-C) (exit code {EXIT_INTERRUPTED})"


if __name__ == "__main__":
    sys.exit(main())
