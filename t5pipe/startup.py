"""Quiet start-up for every `t5pipe` command: only t5pipe's own lines, and real warnings.

`configure(verbose)` runs in `t5pipe.cli` before any heavy library is imported:

- TensorFlow/XLA C++ logging is set through the environment (TF_CPP_MIN_LOG_LEVEL,
  GRPC_VERBOSITY), which those libraries read when they load;
- TensorFlow is kept off GPUs (JAX owns them; TF only feeds data). Whether a GPU is
  there is probed from the device nodes first: on a GPU host TF's GPUs are hidden with
  `tf.config.set_visible_devices([], "GPU")` (JAX still sees them); on a CPU-only host
  TF is left alone;
- the lines TensorFlow's C++ code writes while it loads and enumerates devices go
  through a filter. They are printed before absl's C++ logging is initialised, which
  ignores every log level; so the filter drops the info/warning lines and the expected
  "failed call to cuInit" of a CPU-only host, and passes everything else through
  (Python warnings and unknown errors included);
- absl's Python logging is set to WARNING, and orbax's "Type handler registry
  overriding" lines (orbax registering its own handlers twice) are dropped.

`--verbose` or T5PIPE_LOG_LEVEL=debug turns all of this off: everything is shown.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator

LOG_LEVEL_VARIABLE = "T5PIPE_LOG_LEVEL"

# absl's C++ line prefix (`I0000 00:00:1796216950.850795   10533 cudart_stub.cc:31] ...`)
# and TSL's older one (`2026-01-01 12:00:00.000000: I tensorflow/...`).
# Before absl::InitializeLog the time is printed as 00:00:<seconds since the epoch>.
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ \S+:\d+\] (.*)")
_TSL_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) \S+:\d+\] (.*)")
_NOISE = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "To enable the following instructions:",  # continuation of cpu_feature_guard's I line
)
# Errors TF logs on every host without a usable CUDA driver; JAX decides about GPUs.
_EXPECTED_ERRORS_WITHOUT_GPU = (
    "failed call to cuInit",
    "Unable to register cuDNN factory",
    "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
)


def verbose_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """(whether --verbose or T5PIPE_LOG_LEVEL=debug asks for every line, argv without
    --verbose). Only tokens before a lone `--` count."""
    end = argv.index("--") if "--" in argv else len(argv)
    flagged = "--verbose" in argv[:end]
    rest = [arg for arg in argv[:end] if arg != "--verbose"] + argv[end:]
    debug = os.environ.get(LOG_LEVEL_VARIABLE, "").lower() == "debug"
    return flagged or debug, rest


def configure(verbose: bool) -> None:
    """Sets the libraries' logging before they load; see the module docstring."""
    if verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        _install_import_hooks(quiet=False)
        return
    # Users may set any of these themselves; theirs win.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    _install_import_hooks(quiet=True)
    # absl's Python logger is set when absl.logging is first imported (it must create
    # that logger itself); importing it here would cost every `--help`.
    if "absl.logging" in sys.modules:
        _load_absl_logging(lambda: None, sys.modules["absl.logging"], quiet=True)
    for name in ("jax", "orbax", "tensorflow"):
        logging.getLogger(name).setLevel(logging.WARNING)


def gpu_present() -> bool:
    """Whether this host has an NVIDIA GPU (device nodes; WSL's /dev/dxg), without
    loading any CUDA library."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/dxg")


class _DropOrbaxRegistryNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Type handler registry overriding")


def is_noise(line: str, gpu: bool) -> bool:
    """Whether `line` (written to stderr while TensorFlow loads) is start-up noise."""
    stripped = line.strip()
    if not stripped or stripped.startswith(_NOISE):
        return bool(stripped)
    match = _ABSL_LINE.match(stripped) or _TSL_LINE.match(stripped)
    if not match:
        return False
    severity, text = match.groups()
    if severity in "IW":
        return True
    return (
        severity == "E" and not gpu and any(known in text for known in _EXPECTED_ERRORS_WITHOUT_GPU)
    )


@contextlib.contextmanager
def filtered_stderr(drop: Callable[[str], bool]) -> Iterator[None]:
    """Sends file descriptor 2 (C++ and Python writes alike) to a temporary file, then
    writes back the lines `drop` keeps."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not drop(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def _keep_tensorflow_off_gpus(tf, gpu: bool) -> None:
    if gpu:
        tf.config.set_visible_devices([], "GPU")
    # Creating TF's device list now (TF does it on first use anyway) keeps the lines it
    # prints inside the filter rather than in the middle of a run.
    tf.config.list_logical_devices("CPU")


def _load_tensorflow(load: Callable[[], None], module, quiet: bool) -> None:
    gpu = gpu_present()
    context = (
        filtered_stderr(lambda line: is_noise(line, gpu)) if quiet else contextlib.nullcontext()
    )
    with context:
        load()
        try:
            _keep_tensorflow_off_gpus(module, gpu)
        except RuntimeError:  # devices already initialised by the importing code
            pass


def _load_absl_logging(load: Callable[[], None], module, quiet: bool) -> None:
    load()
    if quiet:
        module.set_verbosity(module.WARNING)
        module.get_absl_logger().addFilter(_DropOrbaxRegistryNotice())


class _WrappedLoader:
    """A module's own loader, run through `around(load, module, quiet)`."""

    def __init__(self, loader, around, quiet: bool):
        self._loader, self._around, self._quiet = loader, around, quiet

    def __getattr__(self, name: str):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._around(lambda: self._loader.exec_module(module), module, self._quiet)


class _StartupFinder:  # a meta path finder (importlib.abc costs ~0.1 s to import)
    """Wraps the first import of each module in `_AROUND` (then lets it be)."""

    def __init__(self, quiet: bool):
        self._quiet = quiet
        self._pending = {name for name in _AROUND if name not in sys.modules}

    def find_spec(self, name, path=None, target=None):
        if name not in self._pending:
            return None
        self._pending.discard(name)
        if not self._pending:
            sys.meta_path.remove(self)
        spec = _find_spec_without(self, name, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _WrappedLoader(spec.loader, _AROUND[name], self._quiet)
        return spec


def _find_spec_without(finder, name, path, target):
    for other in sys.meta_path:
        if other is finder or not hasattr(other, "find_spec"):
            continue
        spec = other.find_spec(name, path, target)
        if spec is not None:
            return spec
    return None


_AROUND = {"tensorflow": _load_tensorflow, "absl.logging": _load_absl_logging}


def _install_import_hooks(quiet: bool) -> None:
    if any(isinstance(finder, _StartupFinder) for finder in sys.meta_path):
        return
    finder = _StartupFinder(quiet)
    if finder._pending:  # in a process that has both loaded already there is nothing to do
        sys.meta_path.insert(0, finder)
