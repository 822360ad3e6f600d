"""bench/label_export.py at a tiny size on the CPU: it builds its capture and clicks, runs the
export through main.py and prints its table with the frame count and resolution asked for."""
import os

import pytest

from bench import label_export


@pytest.mark.usefixtures("one_thread")
def test_tiny_label_export_prints_its_table(tmp_path, capsys):
    work = tmp_path / "work"
    argv = ["--frames", "6", "--width", "32", "--height", "24", "--netwidth", "16", "--samples", "8", "8",
            "--work", str(work)]
    assert label_export.main(argv) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| 6 | 32x24 |"))
    seconds, rate = (float(x) for x in row.split("|")[3:5])
    assert seconds > 0 and rate == pytest.approx(6 / seconds, rel=0.2)   # (both rounded)
    assert len(os.listdir(work / "labels" / "all_frames_bench" / "labels")) == 6
