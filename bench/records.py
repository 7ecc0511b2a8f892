"""Writing benchmark records: one JSON file per record, replaced atomically."""

from __future__ import annotations

import json
import os

from flows.provenance import provenance


def write_record(out_dir: str, filename: str, record: dict) -> str:
    """Writes ``record`` as indented JSON to ``out_dir/filename`` (created if missing) through
    a temporary file, so a killed run never leaves half a record. The record's ``provenance``
    (``flows.provenance``: commit, CPU, versions, date, command) is added to ``record`` in
    place unless it has one, so what the caller prints next is what was written. Returns
    the path.

    (The reference harnesses write theirs with ``bench.peer_common.emit``: they run in the
    references' venvs, without ``flows``.)"""
    record.setdefault("provenance", provenance())
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, filename)
    with open(path + ".tmp", "w") as f:
        f.write(json.dumps(record, indent=2) + "\n")
    os.replace(path + ".tmp", path)
    return path
