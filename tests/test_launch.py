"""launch/ scripts against fake `gcloud`, `sbatch`, `srun` (and, on the "workers", fake
`curl`, `python3.11` and `t5pipe`) that record their argv: --dry_run prints exactly the
commands a real run executes, the commands carry the zone, accelerator type,
--worker=all, the t5pipe command and its environment, and the shell lines sent to the
workers really do what they should when a shell runs them.
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

LAUNCH = REPO_ROOT / "launch"
TPU = LAUNCH / "tpu"
SLURM = LAUNCH / "slurm"

# Appends {"program", "argv", "cwd", "env"} as one JSON line to $FAKE_LOG; `curl` answers
# the metadata server's worker number; FAKE_SLEEP keeps a fake t5pipe running.
FAKE_PROGRAM = """#!{python}
import json, os, sys, time
name = os.path.basename(sys.argv[0])
record = {{"program": name, "argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(record) + "\\n")
if name == "curl":
    print(os.environ.get("FAKE_WORKER_NUMBER", "0"))
if name == "python3.11" and sys.argv[1:3] == ["-m", "venv"]:
    bin_dir = os.path.join(sys.argv[3], "bin")
    os.makedirs(bin_dir)
    for tool in ("pip", "t5pipe"):
        os.symlink(sys.argv[0], os.path.join(bin_dir, tool))
if name == "t5pipe":
    print("t5pipe says hello from", os.getcwd(), flush=True)
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
"""

TPU_SETTINGS = ["--project=my-project", "--zone=us-central2-b", "--tpu_name=t5-test"]
TRAIN = [
    "train",
    "--gin_file=runs/finetune.gin",
    "--gin_file=models/t5_1_1/base.gin",
    "--gin.MIXTURE_OR_TASK_NAME=glue_v002_proportional",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 128}",
]


class Fakes:
    """A bin folder of recording fakes first on PATH, and helpers to run scripts."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.log = tmp_path / "calls.jsonl"
        self.log.touch()
        program = FAKE_PROGRAM.format(python=sys.executable)
        for name in ("gcloud", "sbatch", "srun", "curl", "python3.11", "t5pipe"):
            path = self.bin / name
            path.write_text(program)
            path.chmod(0o755)
        self.env = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "HOME": str(tmp_path / "home"),
            "TMPDIR": str(tmp_path),
            "FAKE_LOG": str(self.log),
        }

    def run(self, script: Path, *args: str, env: dict | None = None, cwd=None):
        """Runs a launch script; returns the finished process (stdout, stderr, returncode)."""
        return subprocess.run(
            [str(script), *args],
            env={**self.env, **(env or {})},
            cwd=cwd or self.tmp,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def calls(self, program: str | None = None) -> list[dict]:
        records = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [r for r in records if program is None or r["program"] == program]

    def clear(self):
        self.log.write_text("")


@pytest.fixture
def fakes(tmp_path):
    return Fakes(tmp_path)


def dry_and_real(fakes, script, *args, env=None, program="gcloud"):
    """Runs the script with --dry_run, then for real against the fakes; asserts the dry run
    ran nothing and printed exactly the commands the real run made. Returns their argv
    (without the program name)."""
    dry = (
        fakes.run(script, *args, "--dry_run", env=env)
        if "--" not in args
        else fakes.run(
            script, *args[: args.index("--")], "--dry_run", *args[args.index("--") :], env=env
        )
    )
    assert dry.returncode == 0, dry.stderr
    assert fakes.calls() == [], "--dry_run must not run anything"
    printed = [shlex.split(line) for line in dry.stdout.splitlines()]
    real = fakes.run(script, *args, env=env)
    assert real.returncode == 0, real.stderr
    recorded = [[c["program"], *c["argv"]] for c in fakes.calls(program)]
    assert [p for p in printed if p[0] == program] == recorded
    return [argv[1:] for argv in recorded]


def flag_value(argv: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} appears {len(values)} times in {argv}"
    return values[0]


# --- create / delete ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, expected",
    [
        (
            [],
            [
                "compute",
                "tpus",
                "tpu-vm",
                "create",
                "t5-test",
                "--zone=us-central2-b",
                "--project=my-project",
                "--version=tpu-ubuntu2204-base",
                "--accelerator-type=v4-8",
            ],
        ),
        (
            ["--accelerator_type=v5e-8", "--spot"],
            [
                "compute",
                "tpus",
                "tpu-vm",
                "create",
                "t5-test",
                "--zone=us-central2-b",
                "--project=my-project",
                "--version=v2-alpha-tpuv5-lite",
                "--accelerator-type=v5litepod-8",
                "--spot",
            ],
        ),
        (
            ["--accelerator_type=v4-32", "--preemptible", "--runtime_version=my-runtime"],
            [
                "compute",
                "tpus",
                "tpu-vm",
                "create",
                "t5-test",
                "--zone=us-central2-b",
                "--project=my-project",
                "--version=my-runtime",
                "--accelerator-type=v4-32",
                "--preemptible",
            ],
        ),
        (
            ["--queued", "--spot", "--valid_until_duration=6h", "--accelerator_type=v5p-8"],
            [
                "compute",
                "tpus",
                "queued-resources",
                "create",
                "t5-test-qr",
                "--zone=us-central2-b",
                "--project=my-project",
                "--node-id=t5-test",
                "--runtime-version=v2-alpha-tpuv5",
                "--accelerator-type=v5p-8",
                "--spot",
                "--valid-until-duration=6h",
            ],
        ),
        (
            [
                "--num_slices=2",
                "--accelerator_type=v5litepod-16",
                "--reserved",
                "--queued_resource=my-qr",
            ],
            [
                "compute",
                "tpus",
                "queued-resources",
                "create",
                "my-qr",
                "--zone=us-central2-b",
                "--project=my-project",
                "--node-count=2",
                "--node-prefix=t5-test",
                "--runtime-version=v2-alpha-tpuv5-lite",
                "--accelerator-type=v5litepod-16",
                "--reserved",
            ],
        ),
    ],
    ids=["plain", "v5e-spot", "preemptible", "queued", "multislice"],
)
def test_create(fakes, flags, expected):
    assert dry_and_real(fakes, TPU / "create.sh", *TPU_SETTINGS, *flags) == [expected]


def test_create_settings_come_from_the_environment_and_flags_win(fakes):
    env = {
        "ZONE": "europe-west4-a",
        "TPU_NAME": "from-env",
        "ACCELERATOR_TYPE": "v6e-8",
        "SPOT": "1",
    }
    [argv] = dry_and_real(fakes, TPU / "create.sh", "--zone=us-east5-b", env=env)
    assert argv[:5] == ["compute", "tpus", "tpu-vm", "create", "from-env"]
    assert flag_value(argv, "zone") == "us-east5-b"
    assert flag_value(argv, "accelerator-type") == "v6e-8"
    assert flag_value(argv, "version") == "v2-alpha-tpuv6e"
    assert "--spot" in argv and not any(a.startswith("--project") for a in argv)


def test_create_passes_extra_gcloud_flags_after_double_dash(fakes):
    [argv] = dry_and_real(
        fakes, TPU / "create.sh", *TPU_SETTINGS, "--", "--network=my-net", "--internal-ips"
    )
    assert argv[-2:] == ["--network=my-net", "--internal-ips"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tpu_name=x"], "--zone (or environment variable ZONE) is required"),
        (["--zone=z"], "--tpu_name (or environment variable TPU_NAME) is required"),
        ([*TPU_SETTINGS, "--spot", "--preemptible"], "--spot and --preemptible exclude"),
        ([*TPU_SETTINGS, "--queued", "--preemptible"], "queued resources take --spot"),
        ([*TPU_SETTINGS, "--accelerator_type=v4"], "--accelerator_type=v4 is not TYPE-SIZE"),
        ([*TPU_SETTINGS, "--accelerator_type=v9-8"], "no default --runtime_version"),
        ([*TPU_SETTINGS, "--num_slices=0"], "--num_slices=0 is not a positive integer"),
        ([*TPU_SETTINGS, "--valid_until_duration=1h"], "--valid_until_duration needs --queued"),
        ([*TPU_SETTINGS, "--zonee=x"], "unknown flag --zonee"),
        ([*TPU_SETTINGS, "--spot=yes"], "--spot takes no value"),
        ([*TPU_SETTINGS, "--zone"], "--zone needs a value"),
    ],
)
def test_create_rejects_bad_settings_clearly(fakes, args, message):
    result = fakes.run(TPU / "create.sh", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert fakes.calls() == []


def test_delete(fakes):
    assert dry_and_real(fakes, TPU / "delete.sh", *TPU_SETTINGS) == [
        [
            "compute",
            "tpus",
            "tpu-vm",
            "delete",
            "t5-test",
            "--zone=us-central2-b",
            "--project=my-project",
            "--quiet",
        ]
    ]
    fakes.clear()
    assert dry_and_real(fakes, TPU / "delete.sh", *TPU_SETTINGS, "--queued") == [
        [
            "compute",
            "tpus",
            "queued-resources",
            "delete",
            "t5-test-qr",
            "--zone=us-central2-b",
            "--project=my-project",
            "--force",
            "--quiet",
        ]
    ]


# --- the worker side: run the shell line a script sends over ssh -------------------------


def worker_home(fakes, name="worker") -> Path:
    """A worker's home folder with the layout setup.sh leaves: t5pipe/ and a virtual
    environment whose activate script puts its (fake) t5pipe first on PATH."""
    home = fakes.tmp / name
    (home / "t5pipe").mkdir(parents=True)
    venv_bin = home / "t5pipe-venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "t5pipe").symlink_to(fakes.bin / "t5pipe")
    (venv_bin / "activate").write_text(
        f'export VIRTUAL_ENV="{venv_bin.parent}"\nexport PATH="{venv_bin}:$PATH"\n'
    )
    return home


def run_on_worker(fakes, home: Path, command: str, **env) -> subprocess.CompletedProcess:
    """What `gcloud ... ssh --command=COMMAND` does on a worker: a shell in its home."""
    worker_env = {**fakes.env, "HOME": str(home), "PATH": f"{fakes.bin}:/usr/bin:/bin", **env}
    return subprocess.run(
        ["bash", "-c", command],
        env=worker_env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_for_call(fakes, program, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if calls := fakes.calls(program):
            return calls
        time.sleep(0.05)
    raise AssertionError(f"{program} was never called")


def pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- setup ---------------------------------------------------------------------------------


def make_checkout(tmp_path) -> Path:
    source = tmp_path / "checkout"
    for relative in (
        "setup.py",
        "t5pipe/__init__.py",
        "gin/models/tiny.gin",
        ".git/HEAD",
        ".venv/bin/python",
        "t5pipe/__pycache__/x.pyc",
    ):
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        (source / relative).write_text(relative)
    return source


def test_setup_from_local_checkout_installs_on_every_worker(fakes):
    source = make_checkout(fakes.tmp)
    scp, ssh = dry_and_real(fakes, TPU / "setup.sh", *TPU_SETTINGS, f"--source_dir={source}")
    archive = fakes.tmp / "t5pipe-src.tar.gz"
    assert scp == [
        "compute",
        "tpus",
        "tpu-vm",
        "scp",
        str(archive),
        "t5-test:t5pipe-src.tar.gz",
        "--zone=us-central2-b",
        "--project=my-project",
        "--worker=all",
    ]
    assert ssh[:5] == ["compute", "tpus", "tpu-vm", "ssh", "t5-test"]
    assert "--worker=all" in ssh and flag_value(ssh, "zone") == "us-central2-b"
    with tarfile.open(archive) as packed:
        names = {Path(n).as_posix().lstrip("./") for n in packed.getnames()}
    assert {"setup.py", "t5pipe/__init__.py", "gin/models/tiny.gin"} <= names
    assert not any(n.startswith((".git", ".venv")) or "__pycache__" in n for n in names)

    # On a worker (after the scp): the archive unpacks into ~/t5pipe, a venv is made with
    # python3.11, and its pip installs the checkout editable together with jax[tpu].
    home = fakes.tmp / "worker"
    home.mkdir()
    (home / "t5pipe-src.tar.gz").write_bytes(archive.read_bytes())
    fakes.clear()
    result = run_on_worker(fakes, home, flag_value(ssh, "command"))
    assert result.returncode == 0, result.stderr
    assert "t5pipe installed on" in result.stdout
    assert (home / "t5pipe" / "gin" / "models" / "tiny.gin").is_file()
    assert not (home / "t5pipe" / ".git").exists()
    programs = [[c["program"], *c["argv"]] for c in fakes.calls()]
    assert programs == [
        ["python3.11", "-m", "venv", "t5pipe-venv"],
        ["pip", "install", "--quiet", "--upgrade", "pip"],
        [
            "pip",
            "install",
            "--quiet",
            "-e",
            "t5pipe",
            "jax[tpu]",
            "-f",
            "https://storage.googleapis.com/jax-releases/libtpu_releases.html",
        ],
        ["t5pipe", "--help"],
    ]


def test_setup_from_git_on_a_multislice_queued_resource(fakes):
    [ssh] = dry_and_real(
        fakes,
        TPU / "setup.sh",
        *TPU_SETTINGS,
        "--source=git",
        "--repo_url=https://github.com/me/t5pipe.git",
        "--ref=v0.1",
        "--num_slices=2",
        "--libtpu_find_links=",
    )
    assert ssh[:5] == ["compute", "tpus", "queued-resources", "ssh", "t5-test-qr"]
    assert "--node=all" in ssh and "--worker=all" in ssh
    command = flag_value(ssh, "command")
    assert "git clone --quiet https://github.com/me/t5pipe.git t5pipe" in command
    assert "git -C t5pipe checkout --quiet v0.1" in command
    assert "pip install --quiet -e t5pipe 'jax[tpu]' &&" in command


def test_setup_errors(fakes):
    result = fakes.run(TPU / "setup.sh", *TPU_SETTINGS, "--source=git")
    assert (
        result.returncode == 2 and "--repo_url (or environment variable REPO_URL)" in result.stderr
    )
    result = fakes.run(TPU / "setup.sh", *TPU_SETTINGS, f"--source_dir={fakes.tmp}")
    assert result.returncode == 2 and "is not a t5pipe checkout" in result.stderr
    assert fakes.calls() == []


# --- run / logs / stop -------------------------------------------------------------------


def test_run_starts_the_train_command_on_all_workers_with_a_log_each(fakes):
    [ssh] = dry_and_real(
        fakes,
        TPU / "run.sh",
        *TPU_SETTINGS,
        "--model_dir=gs://bucket/run1",
        "--run_name=r1",
        "--env=TFDS_DATA_DIR=gs://bucket/tfds",
        "--env=NOTE=two words",
        "--",
        *TRAIN,
    )
    assert ssh[:5] == ["compute", "tpus", "tpu-vm", "ssh", "t5-test"]
    assert flag_value(ssh, "zone") == "us-central2-b"
    assert flag_value(ssh, "project") == "my-project"
    assert flag_value(ssh, "worker") == "all"

    # What every worker does with that line: worker 3 (the metadata server's answer).
    home = worker_home(fakes)
    fakes.clear()
    result = run_on_worker(fakes, home, flag_value(ssh, "command"), FAKE_WORKER_NUMBER="3")
    assert result.returncode == 0, result.stderr
    [t5pipe] = wait_for_call(fakes, "t5pipe")
    assert t5pipe["argv"] == [*TRAIN, "--gin.MODEL_DIR=gs://bucket/run1"]
    assert t5pipe["cwd"] == str(home / "t5pipe")
    env = t5pipe["env"]
    assert env["TPU_NAME"] == "t5-test"
    assert env["MODEL_DIR"] == "gs://bucket/run1"
    assert env["TFDS_DATA_DIR"] == "gs://bucket/tfds"
    assert env["NOTE"] == "two words"
    assert env["VIRTUAL_ENV"] == str(home / "t5pipe-venv")
    [curl] = fakes.calls("curl")
    assert curl["argv"][-1].endswith("/instance/attributes/agent-worker-number")

    log_dir = home / "t5pipe-logs" / "r1" / "worker-3"
    pid = int((log_dir / "pid").read_text())
    deadline = time.monotonic() + 20
    while pid_running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "t5pipe says hello from" in (log_dir / "train.log").read_text()
    assert os.readlink(home / "t5pipe-logs" / "latest") == "r1"
    assert f"started train (pid {pid}), log {log_dir}/train.log" in result.stdout


def test_run_keeps_an_explicit_model_dir_binding_and_runs_eval_as_given(fakes):
    [ssh] = dry_and_real(
        fakes,
        TPU / "run.sh",
        *TPU_SETTINGS,
        "--model_dir=gs://b/x",
        "--",
        "train",
        "--gin.MODEL_DIR=gs://b/y",
    )
    command = flag_value(ssh, "command")
    assert "t5pipe train --gin.MODEL_DIR=gs://b/y >" in command
    assert "gs://b/x" in command  # still exported as MODEL_DIR
    fakes.clear()
    [ssh] = dry_and_real(
        fakes,
        TPU / "run.sh",
        *TPU_SETTINGS,
        "--model_dir=gs://b/x",
        "--worker=0",
        "--run_name=e1",
        "--",
        "eval",
        "--checkpoint=gs://b/c",
    )
    assert flag_value(ssh, "worker") == "0"
    command = flag_value(ssh, "command")
    assert "t5pipe eval --checkpoint=gs://b/c >" in command
    assert "/e1/" in command and "eval.log" in command


def test_run_in_the_foreground_streams_and_returns_the_exit_status(fakes):
    [ssh] = dry_and_real(
        fakes, TPU / "run.sh", *TPU_SETTINGS, "--foreground", "--run_name=f", "--", "tasks"
    )
    home = worker_home(fakes)
    result = run_on_worker(fakes, home, flag_value(ssh, "command"))
    assert result.returncode == 0, result.stderr
    assert "t5pipe says hello" in result.stdout
    assert "t5pipe says hello" in (home / "t5pipe-logs/f/worker-0/tasks.log").read_text()
    # A failing command fails the ssh command (pipefail through tee).
    (home / "t5pipe-venv/bin/t5pipe").unlink()
    (home / "t5pipe-venv/bin/t5pipe").write_text("#!/bin/sh\necho broken\nexit 3\n")
    (home / "t5pipe-venv/bin/t5pipe").chmod(0o755)
    assert run_on_worker(fakes, home, flag_value(ssh, "command")).returncode == 3


def test_run_on_a_multislice_queued_resource(fakes):
    [ssh] = dry_and_real(
        fakes,
        TPU / "run.sh",
        *TPU_SETTINGS,
        "--num_slices=2",
        "--run_name=ms",
        "--",
        *TRAIN,
        "--gin.create_mesh.dcn_mesh_shape=(2, 1, 1)",
    )
    assert ssh[:5] == ["compute", "tpus", "queued-resources", "ssh", "t5-test-qr"]
    assert flag_value(ssh, "node") == "all" and flag_value(ssh, "worker") == "all"
    home = worker_home(fakes)
    fakes.clear()
    assert run_on_worker(fakes, home, flag_value(ssh, "command")).returncode == 0
    [t5pipe] = wait_for_call(fakes, "t5pipe")
    assert t5pipe["argv"][-1] == "--gin.create_mesh.dcn_mesh_shape=(2, 1, 1)"
    hostname = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    assert (home / "t5pipe-logs" / "ms" / hostname / "pid").exists()  # slices share numbers


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give the t5pipe command after --"),
        (["--", "trian"], "'trian' is not a t5pipe command"),
        (["--env=1BAD=x", "--", "train"], "--env '1BAD=x' is not NAME=VALUE"),
        (["--worker=some", "--", "train"], "--worker=some: expected all or a worker index"),
        (["--run_name=a/b", "--", "train"], "--run_name=a/b: use letters"),
        (["train"], "unexpected argument 'train'"),
    ],
)
def test_run_rejects_bad_settings_clearly(fakes, args, message):
    result = fakes.run(TPU / "run.sh", *TPU_SETTINGS, *args)
    assert result.returncode == 2 and message in result.stderr
    assert fakes.calls() == []


def test_logs_tails_each_workers_log(fakes):
    [ssh] = dry_and_real(fakes, TPU / "logs.sh", *TPU_SETTINGS, "--worker=1", "--tail_lines=2")
    assert flag_value(ssh, "worker") == "1"
    home = fakes.tmp / "worker"
    log_dir = home / "t5pipe-logs" / "r1" / "worker-1"
    log_dir.mkdir(parents=True)
    (log_dir / "train.log").write_text("step 1\nstep 2\nstep 3\n")
    (home / "t5pipe-logs" / "latest").symlink_to("r1")
    result = run_on_worker(fakes, home, flag_value(ssh, "command"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2:] == ["step 2", "step 3"]

    fakes.clear()
    [ssh] = dry_and_real(fakes, TPU / "logs.sh", *TPU_SETTINGS, "--follow", "--run_name=r1")
    assert flag_value(ssh, "worker") == "all"
    assert flag_value(ssh, "command") == "tail -n 100 -F ~/t5pipe-logs/r1/*/*.log"


def test_stop_ends_the_running_job_on_each_worker(fakes):
    [start] = dry_and_real(fakes, TPU / "run.sh", *TPU_SETTINGS, "--run_name=long", "--", *TRAIN)
    home = worker_home(fakes)
    assert run_on_worker(fakes, home, flag_value(start, "command"), FAKE_SLEEP="60").returncode == 0
    wait_for_call(fakes, "t5pipe")
    pid = int((home / "t5pipe-logs/long/worker-0/pid").read_text())
    try:
        assert pid_running(pid)
        fakes.clear()
        stop_ssh, stop_vm = dry_and_real(fakes, TPU / "stop.sh", *TPU_SETTINGS, "--vm")
        assert flag_value(stop_ssh, "worker") == "all"
        assert stop_vm == [
            "compute",
            "tpus",
            "tpu-vm",
            "stop",
            "t5-test",
            "--zone=us-central2-b",
            "--project=my-project",
        ]
        result = run_on_worker(fakes, home, flag_value(stop_ssh, "command"))
        assert result.returncode == 0, result.stderr
        assert f"stopped pid {pid}" in result.stdout
        deadline = time.monotonic() + 20
        while pid_running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_running(pid)
    finally:
        if pid_running(pid):
            os.kill(pid, signal.SIGKILL)


# --- SLURM ---------------------------------------------------------------------------------


def test_slurm_submit(fakes):
    log_dir = fakes.tmp / "logs"
    [sbatch] = dry_and_real(
        fakes,
        SLURM / "submit.sh",
        "--nodes=4",
        "--partition=a100",
        "--account=lab",
        "--time=24:00:00",
        f"--log_dir={log_dir}",
        "--venv=/shared/venv",
        "--model_dir=/shared/runs/ft",
        "--env=NCCL_DEBUG=WARN",
        "--",
        *TRAIN,
        program="sbatch",
    )
    assert sbatch[-len(TRAIN) - 2 :] == [
        str(SLURM / "train.sbatch"),
        *TRAIN,
        "--gin.MODEL_DIR=/shared/runs/ft",
    ]
    flags = sbatch[: -len(TRAIN) - 2]
    assert flags == [
        "--job-name=t5pipe",
        "--nodes=4",
        "--ntasks-per-node=8",
        "--gpus-per-node=8",
        "--exclusive",
        f"--output={log_dir}/%x-%j.sbatch.log",
        f"--export=ALL,T5PIPE_LAUNCH_DIR={LAUNCH},T5PIPE_LOG_DIR={log_dir},"
        "T5PIPE_VENV=/shared/venv,MODEL_DIR=/shared/runs/ft,NCCL_DEBUG=WARN",
        "--partition=a100",
        "--account=lab",
        "--time=24:00:00",
    ]
    assert log_dir.is_dir()  # sbatch would not create the folder of --output


def test_slurm_submit_errors(fakes):
    result = fakes.run(SLURM / "submit.sh", "--env=A=1,2", "--", "train")
    assert result.returncode == 2 and "contains a comma" in result.stderr
    result = fakes.run(SLURM / "submit.sh", "--nodes=0", "--", "train")
    assert result.returncode == 2 and "--nodes=0 is not a positive integer" in result.stderr
    assert fakes.calls() == []


def test_slurm_batch_script_runs_one_task_per_gpu_with_a_log_each(fakes):
    venv = fakes.tmp / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f'export VIRTUAL_ENV="{venv}"\n')
    log_root = fakes.tmp / "slurm-logs"
    # What sbatch gives the batch script (submit.sh's --export plus SLURM's own).
    env = {
        "SLURM_JOB_ID": "42",
        "SLURM_SUBMIT_DIR": str(fakes.tmp),
        "T5PIPE_VENV": str(venv),
        "T5PIPE_LOG_DIR": str(log_root),
        "T5PIPE_LAUNCH_DIR": str(LAUNCH),
        "MODEL_DIR": "/shared/runs/ft",
    }

    dry = fakes.run(SLURM / "train.sbatch", "--dry_run", *TRAIN, env=env)
    assert dry.returncode == 0, dry.stderr
    assert fakes.calls() == []
    source, srun = (shlex.split(line) for line in dry.stdout.splitlines())
    assert source == ["source", f"{venv}/bin/activate"]
    assert srun == [
        "srun",
        "--kill-on-bad-exit=1",
        f"--output={log_root}/42/task-%t.log",
        "t5pipe",
        *TRAIN,
        "--gin.MODEL_DIR=/shared/runs/ft",
    ]

    real = fakes.run(SLURM / "train.sbatch", *TRAIN, env=env)
    assert real.returncode == 0, real.stderr
    [call] = fakes.calls("srun")
    assert call["argv"] == srun[1:]
    assert call["env"]["VIRTUAL_ENV"] == str(venv)  # activated before srun, which passes it on
    assert call["env"]["MODEL_DIR"] == "/shared/runs/ft"
    assert (log_root / "42").is_dir()

    outside = fakes.run(SLURM / "train.sbatch", *TRAIN, env={"T5PIPE_LAUNCH_DIR": str(LAUNCH)})
    assert outside.returncode == 2 and "not inside a SLURM job" in outside.stderr


def test_slurm_batch_script_asks_for_one_task_per_gpu_and_no_gpu_binding():
    """JAX's SLURM detection gives task i the GPU numbered SLURM_LOCALID: the tasks must
    see every GPU of their node, so no per-task GPU binding."""
    text = (SLURM / "train.sbatch").read_text()
    headers = [line.split()[1] for line in text.splitlines() if line.startswith("#SBATCH")]
    assert "--ntasks-per-node=8" in headers and "--gpus-per-node=8" in headers
    assert "--gpus-per-task" not in text and "--gpu-bind" not in text


# --- examples, help, syntax --------------------------------------------------------------


def test_examples_chain_create_setup_run_in_dry_run(fakes):
    env = {
        "ZONE": "us-west4-a",
        "TPU_NAME": "t5-ms",
        "MODEL_DIR": "gs://b/ms",
        "TFDS_DATA_DIR": "gs://b/tfds",
        "INITIAL_CHECKPOINT_PATH": "gs://b/ckpt",
    }
    result = fakes.run(LAUNCH / "examples" / "multislice_v5e.sh", "--dry_run", env=env)
    assert result.returncode == 0, result.stderr
    assert fakes.calls() == []
    commands = [shlex.split(line) for line in result.stdout.splitlines()]
    create = commands[0]
    assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "t5-ms-qr"]
    assert {
        "--node-count=2",
        "--node-prefix=t5-ms",
        "--accelerator-type=v5litepod-16",
        "--spot",
        "--zone=us-west4-a",
    } <= set(create)
    run = commands[-1]
    assert run[:5] == ["gcloud", "compute", "tpus", "queued-resources", "ssh"]
    train = flag_value(run, "command")
    assert "--gin.create_mesh.dcn_mesh_shape='(2, 1, 1)'" in train
    assert "--gin.MODEL_DIR=gs://b/ms" in train

    for example, accelerator in (("finetune_v4_8.sh", "v4-8"), ("multihost_v4_32.sh", "v4-32")):
        fakes.clear()
        result = fakes.run(LAUNCH / "examples" / example, "--dry_run", env=env)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        create = shlex.split(lines[0])
        assert create[:4] == ["gcloud", "compute", "tpus", "tpu-vm"]
        assert f"--accelerator-type={accelerator}" in create
        train = flag_value(shlex.split(lines[-1]), "command")
        assert "t5pipe train --gin_file=runs/finetune.gin" in train
        assert "--gin.INITIAL_CHECKPOINT_PATH=gs://b/ckpt" in train
        assert fakes.calls() == []

    missing = fakes.run(
        LAUNCH / "examples" / "finetune_v4_8.sh", "--dry_run", env={"ZONE": "z", "TPU_NAME": "t"}
    )
    assert missing.returncode != 0 and "set MODEL_DIR to a gs:// folder" in missing.stderr


SCRIPTS = sorted(p for p in LAUNCH.rglob("*.sh") if p.name != "common.sh")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(LAUNCH)))
def test_every_script_is_valid_bash_and_executable(script):
    assert os.access(script, os.X_OK)
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "set -euo pipefail" in script.read_text()


@pytest.mark.parametrize(
    "script",
    [p for p in SCRIPTS if "examples" not in p.parts],
    ids=lambda p: str(p.relative_to(LAUNCH)),
)
def test_every_script_documents_its_flags_including_dry_run(fakes, script):
    result = fakes.run(script, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {script.name} [flags]")
    assert "--dry_run" in result.stdout
