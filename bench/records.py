"""Writing benchmark records: one JSON file per record, replaced atomically."""

from __future__ import annotations

import json
import os


def write_record(out_dir: str, filename: str, record: dict) -> str:
    """Writes ``record`` as indented JSON to ``out_dir/filename`` (created if missing) through
    a temporary file, so a killed run never leaves half a record. Returns the path.

    (``bench/torch_peer.py`` keeps its own copy: it runs in the peer's venv as a standalone
    script.)"""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, filename)
    with open(path + ".tmp", "w") as f:
        f.write(json.dumps(record, indent=2) + "\n")
    os.replace(path + ".tmp", path)
    return path
