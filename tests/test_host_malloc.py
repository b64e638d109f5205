"""The CPU malloc re-exec: when it applies, that it re-executes exactly once with the
settings, keeps the command line and the user's own values, and its off switch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from t5pipe import host_malloc

REPO = Path(__file__).resolve().parents[1]


def _clean_environ(**extra) -> dict:
    environ = {k: v for k, v in os.environ.items() if k not in host_malloc.SETTINGS}
    environ.pop(host_malloc.SWITCH, None)
    environ["PYTHONPATH"] = str(REPO)
    environ.update(extra)
    return environ


def test_wanted_follows_switch_platform_and_existing_settings():
    cpu = {"JAX_PLATFORMS": "cpu"}
    assert host_malloc.wanted(cpu)
    assert not host_malloc.wanted({**cpu, host_malloc.SWITCH: "0"})
    assert not host_malloc.wanted({**cpu, host_malloc.SWITCH: "off"})
    assert not host_malloc.wanted({"JAX_PLATFORMS": "cuda"})
    assert not host_malloc.wanted({"JAX_PLATFORMS": "tpu,cpu"})
    # Already running with every setting (the re-executed process, or a user's own values).
    assert not host_malloc.wanted({**cpu, **host_malloc.SETTINGS})
    assert not host_malloc.wanted({**cpu, **{name: "7" for name in host_malloc.SETTINGS}})
    # One missing setting is enough to want it.
    partial = dict(list(host_malloc.SETTINGS.items())[:1])
    assert host_malloc.wanted({**cpu, **partial})


_PROBE = textwrap.dedent(
    """
    import json, os, sys
    from t5pipe import host_malloc
    count = int(os.environ.get("PROBE_RUNS", "0")) + 1
    os.environ["PROBE_RUNS"] = str(count)
    if count > 3:
        sys.exit("re-executed more than twice")
    host_malloc.reexec_with_cpu_malloc()
    print(json.dumps({
        "runs": count,
        "argv": sys.argv[1:],
        "settings": {name: os.environ.get(name) for name in host_malloc.SETTINGS},
    }))
    """
)


def _probe(tmp_path, **environ) -> dict:
    script = tmp_path / "probe.py"
    script.write_text(_PROBE)
    result = subprocess.run(
        [sys.executable, str(script), "--flag", "a b"],
        env=_clean_environ(**environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_reexecutes_once_with_the_settings_and_the_same_arguments(tmp_path):
    report = _probe(tmp_path, JAX_PLATFORMS="cpu")
    assert report["runs"] == 2  # the original, then the re-executed process only
    assert report["argv"] == ["--flag", "a b"]
    assert report["settings"] == host_malloc.SETTINGS


def test_a_users_own_value_wins(tmp_path):
    report = _probe(tmp_path, JAX_PLATFORMS="cpu", MALLOC_ARENA_MAX="4")
    assert report["runs"] == 2
    assert report["settings"]["MALLOC_ARENA_MAX"] == "4"
    assert report["settings"]["MALLOC_MMAP_MAX_"] == host_malloc.SETTINGS["MALLOC_MMAP_MAX_"]


@pytest.mark.parametrize("environ", [{host_malloc.SWITCH: "0"}, {"JAX_PLATFORMS": "cuda"}])
def test_switched_off_or_on_an_accelerator_it_does_not_reexecute(tmp_path, environ):
    report = _probe(tmp_path, **{"JAX_PLATFORMS": "cpu", **environ})
    assert report["runs"] == 1
    assert report["settings"] == {name: None for name in host_malloc.SETTINGS}


_ENTRY = textwrap.dedent(
    """
    import json, os, sys
    from t5pipe import cli, host_malloc
    print("START " + json.dumps({n: os.environ.get(n) for n in host_malloc.SETTINGS}), flush=True)
    sys.argv = ["t5pipe", *sys.argv[1:]]
    sys.exit(cli.main())
    """
)


@pytest.mark.parametrize("command", ["train", "tasks"])
def test_the_cli_reexecutes_xla_commands_only(tmp_path, command):
    """`t5pipe train` (an XLA command) runs under the settings and still fails with its
    own clear error, once; `t5pipe tasks` is not re-executed."""
    entry = tmp_path / "entry.py"
    entry.write_text(_ENTRY)
    missing = str(tmp_path / "missing.gin")
    args = ["--gin_file", missing] if command == "train" else ["--help"]
    result = subprocess.run(
        [sys.executable, str(entry), command, *args],
        env=_clean_environ(JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = result.stdout.splitlines()
    starts = [json.loads(line[6:]) for line in lines if line.startswith("START ")]
    if command == "train":
        assert result.returncode == 2, result.stderr
        assert starts == [{n: None for n in host_malloc.SETTINGS}, host_malloc.SETTINGS]
        assert result.stderr.count("missing.gin") >= 1
        assert result.stderr.count("t5pipe train: error") == 1
    else:
        assert result.returncode == 0, result.stderr
        assert starts == [{n: None for n in host_malloc.SETTINGS}]
