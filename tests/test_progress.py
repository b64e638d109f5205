"""Progress output: a tqdm bar on a terminal, plain lines (rate, ETA, no carriage
return) anywhere else."""

import io

from t5pipe import progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_every_ten_percent_when_not_a_terminal():
    out = io.StringIO()
    items = list(progress.progress(range(20), 20, "decoding x", stream=out))
    assert items == list(range(20))
    lines = out.getvalue().splitlines()
    assert [line.split(": ")[1].split("%")[0] for line in lines] == [
        str(p) for p in range(10, 101, 10)
    ]
    assert lines[-1].startswith("decoding x: 100% (20/20 batch), ") and "ETA 0m00s" in lines[-1]
    assert " batch/s, ETA " in lines[0] and "\r" not in out.getvalue()


def test_few_items_report_each_and_an_empty_total_reports_nothing():
    out = io.StringIO()
    list(progress.progress(range(3), 3, "d", stream=out))
    assert [line.split(" (")[0] for line in out.getvalue().splitlines()] == [
        "d: 33%",
        "d: 66%",
        "d: 100%",
    ]
    empty = io.StringIO()
    assert list(progress.progress([], 0, "d", stream=empty)) == [] and empty.getvalue() == ""


def test_a_terminal_gets_tqdm():
    out = _Terminal()
    assert list(progress.progress(range(3), 3, "decoding x", stream=out)) == [0, 1, 2]
    assert "\r" in out.getvalue() and "3/3" in out.getvalue()
