"""The README's first command trains the quickstart model and beats the stated threshold."""

import re
import shlex
import subprocess
import sys
import time

from train_testlib import REPO_ROOT, subprocess_env

THRESHOLD = 90.0  # percent exact match; README.md, section "Training", states the same


def _readme_command(model_dir) -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    marker = "t5pipe train --gin_file=runs/quickstart.gin"
    line = next(line for line in readme.splitlines() if marker in line)
    command = line[line.index("t5pipe train") :]
    assert command == (
        "t5pipe train --gin_file=runs/quickstart.gin --gin.MODEL_DIR=/tmp/t5pipe_quickstart"
    )
    args = shlex.split(command.replace("/tmp/t5pipe_quickstart", str(model_dir)))
    # `t5pipe` is the console script of this interpreter's install: run it as a module so
    # the test does not depend on PATH.
    return [sys.executable, "-m", "t5pipe.cli", *args[1:]]


def test_readme_quickstart_learns(tmp_path):
    readme = (REPO_ROOT / "README.md").read_text()
    assert f"{THRESHOLD:.0f}%" in readme.split("## Training", 1)[1]
    started = time.time()
    result = subprocess.run(
        _readme_command(tmp_path / "quickstart"),
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    elapsed = time.time() - started
    assert result.returncode == 0, result.stderr[-3000:]
    match = re.search(
        r"held-out builtin_reverse_v001 validation exact match: ([\d.]+)%", result.stdout
    )
    assert match, result.stdout[-3000:]
    accuracy = float(match.group(1))
    print(f"quickstart: {accuracy:.1f}% exact match in {elapsed:.0f}s")
    assert accuracy > THRESHOLD
    assert (tmp_path / "quickstart" / "checkpoints" / "2000").is_dir()
