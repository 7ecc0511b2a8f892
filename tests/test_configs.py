"""The config files: every variant and combination of variants builds a locked ConfigDict, an
unknown variant is a one-line ConfigError naming the known ones, no config file imports
another, and each ``smoke`` variant is small."""

from __future__ import annotations

import ast
import glob
import itertools
import json
import os
import re
import subprocess
import sys

import pytest

from configs import base
from flows.errors import ConfigError
from tests.cli_checks import assert_one_line_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def _name(path: str) -> str:
    return os.path.basename(path)[: -len(".py")]


def _defines_get_config(path: str) -> bool:
    with open(path) as f:
        tree = ast.parse(f.read())
    return any(isinstance(n, ast.FunctionDef) and n.name == "get_config" for n in tree.body)


CONFIGS = [_name(p) for p in PATHS if _defines_get_config(p)]


def _module(name):
    import importlib

    return importlib.import_module(f"configs.{name}")


def _combinations(module):
    """Every combination of the module's variants that takes at most one of each of its
    ``ONE_OF`` groups (the empty one included)."""
    names = list(module.VARIANTS)
    groups = [set(g) for g in getattr(module, "ONE_OF", ())]
    for r in range(len(names) + 1):
        for combo in itertools.combinations(names, r):
            if all(len(g.intersection(combo)) <= 1 for g in groups):
                yield combo


def _as_dict(config) -> dict:
    return json.loads(config.to_json(sort_keys=True))


def test_the_config_files_are_found():
    assert {"glow_digits", "jet_digits", "tarflow_digits", "toy_gender_age"} <= set(CONFIGS)
    assert "base" not in CONFIGS


@pytest.mark.parametrize("name", CONFIGS)
def test_every_variant_combination_builds_locked(name):
    """Each combination builds, in any order of its variants, and the result is locked (a new
    field, say a misspelt override, is refused)."""
    module = _module(name)
    assert module.VARIANTS, name
    for combo in _combinations(module):
        config = module.get_config(",".join(combo) or None)
        assert config.is_locked, (name, combo)
        with pytest.raises(AttributeError, match="nosuch_field"):
            config.train.nosuch_field = 1
        if len(combo) > 1:
            reordered = module.get_config(",".join(reversed(combo)))
            assert _as_dict(reordered) == _as_dict(config), (name, combo)
    assert _as_dict(module.get_config("")) == _as_dict(module.get_config(None))


@pytest.mark.parametrize("name", CONFIGS)
def test_every_variant_changes_the_config_or_picks_a_default(name):
    """A variant alone is not silently ignored: it changes the resolved config, or every
    field it sets already has that value (e.g. glow_ablation's ``affine``, Glow's default)."""
    module = _module(name)
    plain = _as_dict(module.get_config())
    for variant, change in module.VARIANTS.items():
        changed = _as_dict(module.get_config(variant))
        if changed != plain:
            continue
        assert isinstance(change, dict), (name, variant)
        for section, fields in change.items():
            for field, value in fields.items():
                assert plain[section][field] == value, (name, variant, section, field)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", ["nosuch", "smoke,nosuch", "smoke,"])
def test_an_unknown_variant_is_a_config_error_naming_the_known_ones(name, arg):
    module = _module(name)
    with pytest.raises(ConfigError) as info:
        module.get_config(arg)
    message = str(info.value)
    assert "\n" not in message
    assert f" of {name};" in message, message
    assert message.endswith("known: " + ", ".join(module.VARIANTS)), message


def test_glow_ablation_takes_at_most_one_permutation_and_one_coupling():
    module = _module("glow_ablation")
    for arg in ("reverse,shuffle", "additive,spline,smoke"):
        with pytest.raises(ConfigError, match="glow_ablation takes at most one of"):
            module.get_config(arg)
    cell = module.get_config("spline,reverse").model
    assert (cell.permutation, cell.coupling) == ("reverse", "spline")
    assert module.get_config("cifar10").data.name == "cifar10"


def _imported_configs(path: str) -> list[str]:
    """The config modules that the file at ``path`` imports (``configs.base`` is not one)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("configs.")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # a relative import inside configs/
                found.append("." * node.level + (node.module or ""))
            elif node.module == "configs":
                found += [f"configs.{a.name}" for a in node.names]
            elif (node.module or "").startswith("configs."):
                found.append(node.module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.fullmatch(r"configs\.\w+", node.value):  # importlib.import_module("configs.x")
                found.append(node.value)
    return [m for m in found if m != "configs.base"]


@pytest.mark.parametrize("path", PATHS, ids=[_name(p) for p in PATHS])
def test_no_config_file_imports_another(path):
    assert _imported_configs(path) == []


def test_the_import_check_sees_each_form(tmp_path):
    """The AST check above finds every way of importing a config file."""
    sources = {
        "import configs.glow_digits": ["configs.glow_digits"],
        "from configs import glow_digits, base": ["configs.glow_digits"],
        "from configs.glow_digits import get_config": ["configs.glow_digits"],
        "from . import glow_digits": ["."],
        "import importlib\nimportlib.import_module('configs.jet_digits')": ["configs.jet_digits"],
        "from configs.base import smoke\nimport configs.base": [],
    }
    for source, expected in sources.items():
        path = tmp_path / "config.py"
        path.write_text(source + "\n")
        assert _imported_configs(str(path)) == expected, source


@pytest.mark.parametrize("name", [n for n in CONFIGS if "smoke" in _module(n).VARIANTS])
def test_the_smoke_variant_is_small(name):
    """Fewer training steps, smaller batches and no larger a model than the full config; an
    image config's smoke trains for at most 20 steps of a model smaller in some size."""
    module = _module(name)
    full, small = module.get_config(), module.get_config("smoke")
    for field in ("num_train_steps", "conditional_num_train_steps"):
        if field in full.train:
            assert small.train[field] < full.train[field], field
    assert small.train.batch_size <= full.train.batch_size
    if "data" not in full:  # a toy table
        return
    assert small.train.num_train_steps <= 20
    assert small.train.batch_size <= 64 and small.eval.batch_size <= 150
    sizes = [k for k, v in full.model.items() if type(v) is int]
    assert all(small.model[k] <= full.model[k] for k in sizes), name
    assert any(small.model[k] < full.model[k] for k in sizes), name


@pytest.mark.parametrize("name", CONFIGS)
def test_the_docstring_states_the_command_and_the_variants(name):
    """big_vision style: the command line, every variant named, at most one Expected line."""
    module = _module(name)
    doc = module.__doc__
    assert f"--config=configs/{name}.py" in doc, name
    for variant in module.VARIANTS:
        assert f"``{variant}``" in doc, (name, variant)
    assert sum(line.startswith("Expected:") for line in doc.splitlines()) <= 1, name
    assert not re.search(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b", doc), name


def test_the_helper_parses_and_applies_in_declared_order():
    order = []
    variants = {
        "a": lambda c: order.append("a"),
        "b": {"train": {"seed": 7}},
        "c": lambda c: order.append("c"),
    }
    config = base.with_variants(base.image_config("glow", "digits"), "c,b,a", "demo", variants)
    assert order == ["a", "c"] and config.train.seed == 7 and config.is_locked
    assert base.parse_variants(None, "demo", variants) == set()
    assert base.parse_variants("", "demo", variants) == set()
    assert base.parse_variants("b,b", "demo", variants) == {"b"}
    with pytest.raises(ConfigError, match=r"^unknown variants 'x', 'y' of demo; known: a, b, c$"):
        base.parse_variants("x,a,y", "demo", variants)
    with pytest.raises(ConfigError, match="demo takes at most one of a, b; got 'a,b'"):
        base.parse_variants("a,b", "demo", variants, one_of=[("a", "b")])
    with pytest.raises(KeyError, match="nosuch"):  # a misspelt field in a variant's settings
        base.with_variants(
            base.image_config("glow", "digits"), "x", "demo", {"x": {"train": {"nosuch": 1}}}
        )


@pytest.mark.slow
def test_an_unknown_variant_on_the_command_line_is_one_error_line(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.train",
            "--config=configs/glow_digits.py:nosuch",
            f"--workdir={tmp_path / 'run'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert_one_line_error(result, "nosuch", "glow_digits", "known: smoke")
    assert not (tmp_path / "run").exists()
