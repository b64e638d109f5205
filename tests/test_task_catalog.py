"""`t5pipe tasks list` reads t5pipe's own table; it must equal what seqio registers."""

import json
import subprocess
import sys

from t5pipe.task_catalog import MIXTURES, TASKS

# A fresh process: other tests register tasks and mixtures of their own.
REGISTERED = """
import json, seqio
import t5pipe.tasks
from t5pipe.commands.tasks import registered
print(json.dumps(registered(seqio)))
"""


def test_catalog_equals_what_seqio_registers():
    result = subprocess.run(
        [sys.executable, "-c", REGISTERED], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    tasks, mixtures = json.loads(result.stdout.splitlines()[-1])
    assert [(name, tuple(splits), source) for name, splits, source in tasks] == list(TASKS)
    as_tuples = [(name, tuple(map(tuple, rates))) for name, rates in mixtures]
    assert as_tuples == list(MIXTURES)


def test_listing_without_modules_needs_neither_seqio_nor_tensorflow():
    code = (
        "import sys; from t5pipe import cli; cli.main(['tasks', 'list', '--filter', 'glue_'])\n"
        "assert 'seqio' not in sys.modules and 'tensorflow' not in sys.modules\n"
        "assert 'jax' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["name", "kind", "splits", "source"]
    assert lines[1].startswith("glue_ax_v002 ") and "TFDS glue/ax:2.0.0" in lines[1]
    assert lines[-1].startswith("super_glue_v102_proportional ")
