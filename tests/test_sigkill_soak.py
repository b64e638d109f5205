"""SIGKILL at random moments (benchmarks/sigkill_soak.py with 3 kills): every rerun
resumes, the final losses equal an uninterrupted run's, one metrics row per step, and
the user's files in checkpoints/ are untouched."""

import sys

from testlib import REPO_ROOT

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
from benchmarks.sigkill_soak import soak  # noqa: E402


def test_three_random_kills_resume_bit_identical(tmp_path):
    figures = soak(kills=3, steps=15, seed=0, work=tmp_path)
    assert figures["one_row_per_step"], figures
    assert figures["losses_bit_identical"], figures
    assert figures["user_files_untouched"], figures
