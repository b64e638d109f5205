"""The user's task modules on every command: `--module NAME` (repeatable) and the
MIXTURE_OR_TASK_MODULE macro without a run gin file, imported from the current folder
(searched last), and "did you mean" for a task name that is not registered."""

import json
import sys

import pytest
from testlib import QUICKSTART

from t5pipe import cli

ROWS = "question\tanswer\n" + "".join(f"q{i}\ta{i}\n" for i in range(8))

MY_TASKS = """
from pathlib import Path

from t5pipe.tasks import user_data
from t5pipe.vocabularies import byt5_vocabulary

rows = str(Path(__file__).parent / "rows.tsv")
user_data.supervised_task(
    "cli_modules_task", {"train": rows, "validation": rows}, "q: {question}", "{answer}",
    metrics=["exact_match"], vocabulary=byt5_vocabulary(), overwrite=True,
)
"""

# Imported only through the macro: registers a mixture over the task above.
MY_MIX = """
import seqio

if "cli_modules_mix" not in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.add("cli_modules_mix", ["cli_modules_task"], default_rate=1.0)
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder holding the user's my_tasks.py (here cli_modules_tasks.py) and its data."""
    folder = tmp_path_factory.mktemp("user_folder")
    (folder / "rows.tsv").write_text(ROWS)
    (folder / "cli_modules_tasks.py").write_text(MY_TASKS)
    (folder / "cli_modules_mix.py").write_text(MY_MIX)
    return folder


def test_train_infer_eval_take_the_users_module_from_the_current_folder(
    folder, monkeypatch, capsys
):
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(folder))])
    model_dir = folder / "run"
    train = ["train", *QUICKSTART, f"--gin.MODEL_DIR={model_dir}", "--module", "cli_modules_tasks"]
    assert cli.main([*train, "--gin.MIXTURE_OR_TASK_NAME='cli_modules_task'"]) == 0, (
        capsys.readouterr().err
    )
    assert sys.path[-1] == str(folder)  # appended: never shadows an installed module
    checkpoint = str(model_dir / "checkpoints" / "2")
    infer = ["infer", "--module", "cli_modules_tasks", "--task", "cli_modules_task"]
    infer += ["--checkpoint", checkpoint, "--max_examples", "3", "--output_file", "out.jsonl"]
    assert cli.main(infer) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (folder / "out.jsonl").read_text().splitlines()]
    assert [r["inputs"] for r in rows] == ["q: q0", "q: q1", "q: q2"]
    capsys.readouterr()
    # The macro alone, with no run gin file binding it: imported, and no "nothing uses it".
    evaluate = ["eval", "--gin.MIXTURE_OR_TASK_MODULE='cli_modules_mix'", "--task"]
    evaluate += ["cli_modules_mix", "--checkpoint", checkpoint, "--output_dir", "eval"]
    assert cli.main(evaluate) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "nothing uses it" not in err, err
    metrics = json.loads((folder / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"cli_modules_task"}


@pytest.mark.parametrize("command", ["train", "eval", "infer", "tasks"])
def test_unknown_task_names_get_did_you_mean_on_every_command(
    command, model_dir_template, tmp_path, capsys
):
    checkpoint = str(model_dir_template / "checkpoints" / "10")
    argv = {
        "train": ["train", *QUICKSTART, f"--gin.MODEL_DIR={tmp_path / 'run'}",
                  "--gin.MIXTURE_OR_TASK_NAME='glue_sst2'"],
        "eval": ["eval", "--task", "glue_sst2", "--checkpoint", checkpoint, "--output_dir",
                 str(tmp_path / "eval")],
        "infer": ["infer", "--task", "glue_sst2", "--checkpoint", checkpoint],
        "tasks": ["tasks", "show", "glue_sst2"],
    }[command]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "'glue_sst2' is not a registered seqio task or mixture (did you mean:" in err, err
    assert "glue_sst2_v002" in err and "Traceback" not in err
