"""Suite-wide pytest hooks: the order in which pytest-xdist hands out the test files.

``scripts/test.sh`` runs the files in parallel with ``--dist loadfile``: a worker takes a
whole file at a time, in the order of the collection. A long file taken last keeps one worker
busy while the others have run out of work, so the longest files must come first. Their cost
is estimated from the ``slow`` marks (pyproject.toml: the tests that train, start processes
or take long), not from a list kept by hand: a slow test counts ``SLOW_WEIGHT``, any other test
1, a file with a slow test at least ``SLOW_FILE_MIN``, and the files are handed out by that
count, largest first (ties in collection order). The estimate is taken over the tests that
run: under ``-m "not slow"`` (``--quick``) it is the number of tests. Without xdist the
collection order is left as it is.
"""

from __future__ import annotations

import pytest

# A file's time is then estimated as its number of tests times their mean duration: a slow
# test took 9.3x as long as another one on average (``--durations=0``, the whole suite).
SLOW_WEIGHT = 9
# A file that trains or starts processes at all took at least 20x the mean of the other tests
# (the files of one end-to-end test, 60-70x): counted by their slow tests alone, such a file
# would be handed out last and end the run on one worker while the other has none left.
SLOW_FILE_MIN = 30


def pytest_configure(config):
    # pytest-xdist >= 3.6 would hand out the files by their number of tests instead.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def _cost(item) -> int:
    return SLOW_WEIGHT if item.get_closest_marker("slow") else 1


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected what does not run
def pytest_collection_modifyitems(config, items):
    if not hasattr(config, "workerinput"):  # not an xdist worker
        return
    cost: dict = {}
    for item in items:
        cost[item.path] = cost.get(item.path, 0) + _cost(item)
    for path in {item.path for item in items if item.get_closest_marker("slow")}:
        cost[path] = max(cost[path], SLOW_FILE_MIN)
    first_seen = {path: i for i, path in enumerate(cost)}
    # A stable sort: each file's tests keep their order (and stay together).
    items.sort(key=lambda item: (-cost[item.path], first_seen[item.path]))
