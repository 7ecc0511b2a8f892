"""Crash safety, the short version of ``scripts/kill_resume.py`` (README "Runs you can
trust"): SIGKILL inside a checkpoint save and inside an atomic file write; the reruns end
with every array of the final checkpoint byte-equal to an uninterrupted run. (Kills at
random instants: the full script.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # trains in subprocesses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_kills_inside_writes_end_bitwise_equal_to_an_uninterrupted_run(tmp_path):
    cmd = [
        sys.executable,
        "scripts/kill_resume.py",
        "--steps=40",
        "--plan=checkpoint:2,write:2",
        f"--out={tmp_path}",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    # Killed while orbax was writing checkpoint 20 (its temporary directory on disk).
    assert any(
        "inside the save of checkpoint 20" in x and "orbax-checkpoint-tmp" in x for x in lines
    )
    assert any("inside the atomic write of config.json" in x for x in lines)
    assert "bitwise equal" in lines[-1], out.stdout
