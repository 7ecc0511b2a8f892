"""Records say where they come from: the commit, the CPU, the libraries and the command."""

import subprocess
import sys

from flows import provenance as prov


def test_provenance_names_this_checkout_and_machine(tmp_path):
    record = prov.provenance(["python", "-m", "experiments.train", "--workdir=runs/a b"])
    head = subprocess.run(
        ["git", "-C", str(prov.REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert record["commit"] == head and isinstance(record["dirty"], bool)
    assert record["command"] == "python -m experiments.train '--workdir=runs/a b'"
    assert record["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert {"jax", "flax", "numpy"} <= set(record["versions"])
    assert set(record["cpu"]["flags"]) <= set(prov.CPU_FLAGS) and record["cpu"]["cores"] >= 1
    assert record["date"].endswith("+00:00")


def test_cpu_info_reads_model_and_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Some CPU 9000\nflags\t\t: fpu avx2 fma amx_bf16 sse\n"
    )
    info = prov.cpu_info(str(cpuinfo))
    assert info["model"] == "Some CPU 9000"
    assert info["flags"] == ["fma", "avx2", "amx_bf16"]  # in CPU_FLAGS' order, others dropped
