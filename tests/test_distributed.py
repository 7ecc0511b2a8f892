"""Two processes joined by ``jax.distributed`` on localhost (2 forced CPU devices each) train
``glow_digits:smoke`` through the real loop, with a resume, like one 4-device process: the
check is ``scripts/check_distributed.py`` (its docstring lists what it asserts: equal final
parameters and records, each process reading only its half of every batch, process 0 alone
writing the run's files, evaluation sharded over the mesh, and in one process four devices
training like one)."""

import importlib.util
import os

import pytest

pytestmark = pytest.mark.slow  # trains in subprocesses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _check_module():
    path = os.path.join(ROOT, "scripts", "check_distributed.py")
    spec = importlib.util.spec_from_file_location("check_distributed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_processes_train_like_one_process_with_four_devices(tmp_path):
    _check_module().check_two_processes_train_like_one(tmp_path)
