"""Signals on the command line, in real processes: the exit codes a shell expects, no tracebacks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def start(*argv: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "pcgraph", *argv], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_sigterm_while_training_saves_and_exits_143(tmp_path):
    run = tmp_path / "run"
    proc = start("train", "specs/digits_mlp.yaml", "inference.compile=false", "--epochs", "200", "--no-progress",
                 "--out", str(run))
    line = proc.stdout.readline()  # the first epoch's line: training is under way
    assert line.startswith("epoch"), line + proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM == 143
    assert "resume with: pcgraph train --resume" in err and "Traceback" not in err
    assert (run / "checkpoint.pt").is_file()


def test_sigint_during_start_up_is_one_line_and_exit_130():
    proc = start("validate", "specs/digits_mlp.yaml")
    time.sleep(0.5)  # importing torch takes longer than this: the signal lands in the imports
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the process had finished before the signal came")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip() == "pcgraph: interrupted"
