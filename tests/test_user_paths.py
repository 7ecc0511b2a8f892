"""Every user path end to end on tiny configs, through the command-line entry points.

Two digits runs are trained once each, in this process (module fixtures): a label-conditioned
one with Glow's auxiliary classifier (``glow_digits_cond.py:smoke`` with
``model.weight_y=0.01``) and an unconditional one (``glow_digits.py:smoke``). Then
``python -m experiments.evaluate``, ``experiments.sample`` and ``experiments.compare`` run on
them as a user runs them (subprocesses, cwd = repository root: forks of one interpreter that
imported the libraries, tests/cli_checks.py), and every config file's ``:smoke`` variant
trains through ``train_and_evaluate`` (catalog datasets on mocked data).
The toy-table configs are run by tests/test_toy_tables.py.
"""

from __future__ import annotations

import csv
import glob
import importlib
import json
import math
import os
import re
import warnings

import numpy as np
import pytest
from PIL import Image

from configs import glow_digits, glow_digits_cond
from flows import plotting
from flows.data.testing import mock_data
from flows.evaluation import read_per_example
from flows.train.loop import train_and_evaluate
from tests.cli_checks import CommandRunner, assert_one_line_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS_SHAPE = (8, 8, 1)
CATALOG_DATASETS = ("mnist", "cifar10")  # served by mock_data here (no download)


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """``cli(module, *args)``: ``python -m experiments.<module> *args`` from the repository
    root, as a user runs it (``cli_checks.CommandRunner``: each command a fork of one
    interpreter that imported the libraries once). The commands share one JAX compilation
    cache (scripts/test.sh gives the whole suite one; standing alone, this file makes its
    own): several of them compile the same evaluation and sampling programs of the same two
    runs."""
    env = {"PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
    for name, value in (
        ("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("jax_cache"))),
        ("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5"),
    ):
        env[name] = os.environ.get(name, value)
    with CommandRunner(env) as runner:
        yield lambda module, *args: runner([f"experiments.{module}", *args])


def _ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _finite(*values):
    return all(isinstance(v, float) and math.isfinite(v) for v in values)


class Run:
    """A trained workdir, the config it was trained with, and the overrides applied to the
    config file's variant (as ``--config.a.b=v`` would)."""

    def __init__(self, tmp_path_factory, name, module, variant, overrides=None):
        self.module, self.variant, self.overrides = module, variant, dict(overrides or {})
        self.config = _config_with(module, variant, self.overrides)
        self.workdir = str(tmp_path_factory.mktemp(name))
        self.name = os.path.basename(self.workdir)
        self.record = train_and_evaluate(self.config, self.workdir)

    @property
    def eval_test(self):
        return _read_json(os.path.join(self.workdir, "eval_test.json"))


def _config_with(module, variant, overrides):
    config = module.get_config(variant)
    config.train.progress = False
    for dotted, value in overrides.items():
        section, field = dotted.split(".")
        config[section][field] = value
    return config


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    return Run(tmp_path_factory, "digits_cond", glow_digits_cond, "smoke", {"model.weight_y": 0.01})


@pytest.fixture(scope="module")
def uncond_run(tmp_path_factory):
    return Run(tmp_path_factory, "digits", glow_digits, "smoke")


RUNS = ("cond_run", "uncond_run")

# -- 1. conditional training with the auxiliary classifier -------------------------------------

CONDITIONAL_FIELDS = ("bits_per_dim", "marginal_bits_per_dim", "accuracy", "label_nll_nats")


@pytest.mark.slow
def test_conditional_run_reports_conditional_marginal_and_bayes_accuracy(cond_run):
    from flows import data as data_lib
    from flows.train.restore import load_run

    record = cond_run.eval_test
    assert record["bits_per_dim"] == cond_run.record["bits_per_dim"]
    assert record["conditional"] is True
    assert record["split"] == "digits:test" and record["num_examples"] == 300
    assert record["importance_samples"] == 1 and record["num_bins"] == 17
    for field in CONDITIONAL_FIELDS:
        assert _finite(record[field], record[f"{field}_se"]), field
        assert record[f"{field}_se"] > 0, field
    assert 0.0 <= record["accuracy"] <= 1.0 and 0.0 < record["chance_accuracy"] < 1.0
    assert record["label_nll_nats"] > 0
    assert _read_json(os.path.join(cond_run.workdir, "config.json"))["model"]["weight_y"] == 0.01
    model, config, _ = load_run(cond_run.workdir)
    # The classifier head weight_y adds (zero-initialised) was trained by its loss term.
    assert np.any(np.asarray(model.aux_classifier.kernel[...]) != 0)

    # The three numbers obey Bayes' rule with p(y) = the training label frequencies, the
    # prior restored with the checkpoint: log p(x) = log p(x|y) + log p(y) - log p(y|x) for
    # every example (same noise draw), so the means over the split satisfy it too.
    splits = data_lib.load_datasets(config.data)
    prior = np.asarray(model.log_label_prior[...], np.float64)
    counts = np.bincount(splits["train"].labels, minlength=10)
    np.testing.assert_allclose(np.exp(prior), counts / counts.sum(), rtol=1e-5)
    dims = math.prod(DIGITS_SHAPE)
    mean_log_prior = float(np.mean(prior[splits["test"].labels]))
    gap_nats = (record["marginal_bits_per_dim"] - record["bits_per_dim"]) * dims * math.log(2)
    assert record["label_nll_nats"] == pytest.approx(-mean_log_prior - gap_nats, abs=1e-4)


@pytest.mark.slow
def test_conditional_run_logs_the_auxiliary_classifier_metric(cond_run):
    logged = [r for r in _metrics(cond_run.workdir) if "train_bpd" in r]
    assert logged
    for r in logged:  # the classifier's cross-entropy in bits, mean since the last log
        assert _finite(r["train_aux_ce_bits"]) and r["train_aux_ce_bits"] > 0, r


@pytest.mark.slow
def test_unconditional_run_writes_everything(uncond_run):
    workdir, record = uncond_run.workdir, uncond_run.record
    for name in ("config.json", "data_info.json", "samples.png", "learning_curves.png"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20"]
    assert uncond_run.eval_test["bits_per_dim"] == pytest.approx(record["bits_per_dim"])
    assert _finite(record["bits_per_dim"]) and record["bits_per_dim"] > 0
    assert record["split"] == "digits:test" and record["num_examples"] == 300
    assert record["num_bins"] == 17 and record["dequantization"] == "uniform"
    assert record["selected_by"] == "best validation bits/dim"
    records = _metrics(workdir)
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    assert all("val_bpd" in r for r in records if r["step"] % 10 == 0)
    # Training lowers bits/dim from the start (the uniform model is log2(17) = 4.09).
    assert records[-1]["train_bpd"] < records[0]["train_bpd"]


# -- 2. experiments.evaluate -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS)
def test_evaluate_importance_weighted_bound(run, request, cli):
    run = request.getfixturevalue(run)
    out = _ok(cli("evaluate", f"--workdir={run.workdir}", "--num_samples=4"))
    path = os.path.join(run.workdir, "eval_test_k4.json")
    assert out.strip().endswith(f"-> {path}")
    k4, k1 = _read_json(path), run.eval_test  # k1: the run's own test evaluation
    assert k4["importance_samples"] == 4 and k1["importance_samples"] == 1
    for field in ("split", "num_examples", "num_bins", "image_shape", "dequantization"):
        assert k4[field] == k1[field], field
    # Same parameters (EMA of the best-on-validation checkpoint) and the same noise seed.
    assert k4["parameters"] == k1["parameters"] == "ema"
    assert k4["checkpoint_step"] == k1["checkpoint_step"] and "/best/" in k4["checkpoint"]
    fields = ("bits_per_dim", "marginal_bits_per_dim") if run.config.model.conditional else ()
    fields = fields or ("bits_per_dim",)
    for field in fields:
        assert _finite(k4[field], k4[f"{field}_se"]) and k4[f"{field}_se"] > 0, field
        # The k-sample bound is lower in expectation for every example. The slack, one
        # between-example standard error, is many times the noise of the paired difference
        # (same examples, same parameters, same noise seed), so no chance failure.
        assert k4[field] <= k1[field] + k1[f"{field}_se"], (field, k4[field], k1[field])
    if run.config.model.conditional:
        assert k4["conditional"] is True and _finite(k4["accuracy"], k4["accuracy_se"])
    # Beside each record, the per-example values it averages, with the noise's key: the
    # same examples and key as the run's own test evaluation (what compare pairs on).
    per_k4 = read_per_example(os.path.join(run.workdir, "eval_test_k4.npz"))
    per_k1 = read_per_example(os.path.join(run.workdir, "eval_test.npz"))
    for per, record in ((per_k4, k4), (per_k1, k1)):
        marginal = "marginal_bits_per_dim" if run.config.model.conditional else "bits_per_dim"
        assert np.mean(per["marginal_bits_per_dim"]) == pytest.approx(record[marginal], rel=1e-12)
        if run.config.model.conditional:
            mean = np.mean(per["conditional_bits_per_dim"])
            assert mean == pytest.approx(record["bits_per_dim"], rel=1e-12)
    np.testing.assert_array_equal(per_k4["index"], np.arange(k1["num_examples"]))
    np.testing.assert_array_equal(per_k4["index"], per_k1["index"])
    np.testing.assert_array_equal(per_k4["noise_key"], per_k1["noise_key"])


@pytest.mark.slow
def test_evaluate_validation_split_of_the_latest_checkpoint(cond_run, cli):
    """``--split=validation --checkpoint=latest`` with the validation noise seed is the
    validation the loop ran after its last step (metrics.jsonl), now with the conditional
    record (marginal bits/dim and Bayes accuracy)."""
    workdir, last = cond_run.workdir, cond_run.config.train.num_train_steps
    seed = cond_run.config.eval.seed
    args = ("--split=validation", "--checkpoint=latest", f"--seed={seed}")
    out = _ok(cli("evaluate", f"--workdir={workdir}", *args))
    path = os.path.join(workdir, "eval_validation_k1.json")
    assert out.strip().endswith(f"-> {path}")
    record = _read_json(path)
    assert record["checkpoint_step"] == last and f"/checkpoints/{last}" in record["checkpoint"]
    assert record["split"].startswith("digits:train[shuffle(seed=0)]")
    assert record["num_examples"] == cond_run.config.data.validation_size
    assert record["conditional"] is True and record["importance_samples"] == 1
    for field in CONDITIONAL_FIELDS:
        assert _finite(record[field], record[f"{field}_se"]), field
    (val_bpd,) = [r["val_bpd"] for r in _metrics(workdir) if r["step"] == last]
    assert record["bits_per_dim"] == pytest.approx(val_bpd, abs=1e-5)  # -log2 p(x|y)


# -- 3. experiments.sample -------------------------------------------------------------------


def _grid(image):
    """The structure ``flows.plotting.save_grid`` records in its PNG: ``rows``, ``columns``
    (per group), ``headers``, ``row_labels``, ``corner``, ``title``."""
    return json.loads(image.text[plotting.GRID_TEXT_KEY])


def _sample_png(cli, run, *args, name):
    out = _ok(cli("sample", f"--workdir={run.workdir}", *args))
    path = os.path.join(run.workdir, name)
    assert out.strip().endswith(f"-> {path}"), out
    with Image.open(path) as image:
        image.load()
    return image


def _grid_levels(image, num_bins, image_shape=DIGITS_SHAPE):
    """The images of a one-channel grid PNG of ``flows.plotting.save_grid``, row by row,
    read back as integer levels: (N, H, W) int32. The cells are where
    ``flows.plotting.grid_layout`` puts them for the structure the PNG records; level v is
    drawn as round(v * 255 / (K - 1)), upscaled (nearest). Every pixel of a cell must be a
    level's shade, the same over each upscaled block."""
    grid = _grid(image)
    groups = list(zip(grid["headers"], grid["columns"], strict=True))
    layout = plotting.grid_layout(
        grid["rows"],
        image_shape,
        groups,
        row_labels=grid["row_labels"],
        corner=grid["corner"],
        title=grid["title"],
    )
    pixels = np.asarray(image)
    assert pixels.shape == (layout.height, layout.width)
    (ch, cw), scale = layout.cell, layout.scale
    shades = np.round(np.arange(num_bins) * (255.0 / (num_bins - 1))).astype(np.uint8)
    level_of = np.full(256, -1, np.int32)
    level_of[shades] = np.arange(num_bins)
    cells = []
    for y in layout.rows_y:
        for x in layout.cells_x:
            cell = pixels[y : y + ch, x : x + cw]
            small = cell[::scale, ::scale]
            np.testing.assert_array_equal(small.repeat(scale, 0).repeat(scale, 1), cell)
            cells.append(level_of[small])
    levels = np.stack(cells)
    assert levels.min() >= 0, "a pixel that is no level's shade"
    return levels


@pytest.mark.slow
def test_sample_one_class(cond_run, cli):
    """``--label=3`` draws class 3: the grid's 64 images, read back as levels, are what the
    run's model (restored as the sampler restores it) draws with label 3 from the sampler's
    latents (seed 0, T 0.7), and not what it draws from them with any other label, or with
    the labels 0..9 in turn of a grid without ``--label``. (The 20-step model's Bayes
    classifier is at chance, so it cannot tell the class of a sample; its samples of
    different labels differ in about 1% of the pixels, a level each.)"""
    import jax
    import jax.numpy as jnp

    from flows.likelihood import quantize
    from flows.models import sample_compiled
    from flows.train.restore import load_run

    image = _sample_png(cli, cond_run, "--label=3", name="samples_T0.7_label3.png")
    assert image.mode == "L" and _grid(image)["columns"] == [8] and _grid(image)["rows"] == 8
    model, _, info = load_run(cond_run.workdir)
    levels = _grid_levels(image, info["num_bins"])

    def draw(labels):
        x = sample_compiled(model, 64, jax.random.key(0), 0.7, labels % model.num_classes)
        return np.asarray(quantize(x, info["num_bins"]))[..., 0]

    np.testing.assert_array_equal(levels, draw(jnp.full((64,), 3)))
    others = {f"label {y}": jnp.full((64,), y) for y in range(10) if y != 3}
    others["labels 0..9 in turn"] = jnp.arange(64)
    for name, labels in others.items():
        assert np.any(draw(labels) != levels), name


@pytest.mark.slow
def test_sample_class_grid(cond_run, cli):
    image = _sample_png(
        cli,
        cond_run,
        "--class_grid",
        "--temperatures=0.5,1.0",
        "--per_temperature=1",
        name="class_grid_T0.5-1.0.png",
    )
    # One row per class (10), one column per temperature (2 x 1 sample).
    grid = _grid(image)
    assert (grid["rows"], grid["columns"], grid["headers"]) == (10, [1, 1], ["T=0.5", "T=1"])
    width, height = image.size
    assert height > width


@pytest.mark.slow
def test_sample_unconditional(uncond_run, cli):
    image = _sample_png(cli, uncond_run, "--temperature=0.9", "--num=8", name="samples_T0.9.png")
    assert image.mode == "L" and (_grid(image)["rows"], _grid(image)["columns"]) == (3, [3])


@pytest.mark.slow
def test_sample_label_of_an_unconditional_run_is_one_line_error(uncond_run, cli):
    # An out-of-range label on a conditional run: tests/test_bad_inputs.py.
    assert_one_line_error(cli("sample", f"--workdir={uncond_run.workdir}", "--label=3"))
    assert not os.path.exists(os.path.join(uncond_run.workdir, "samples_T0.7_label3.png"))


# -- 4. experiments.compare ------------------------------------------------------------------


@pytest.mark.slow
def test_compare_conditional_and_unconditional_runs(cond_run, uncond_run, tmp_path, cli):
    out_dir = tmp_path / "compare"
    stdout = _ok(cli("compare", cond_run.workdir, uncond_run.workdir, f"--out={out_dir}"))
    cond, uncond = cond_run.eval_test, uncond_run.eval_test
    with open(out_dir / "comparison.csv") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert set(rows) == {cond_run.name, uncond_run.name}
    c, u = rows[cond_run.name], rows[uncond_run.name]
    # Ranked on the density of p(x): the conditional run's marginal bits/dim.
    assert float(c["marginal_bits_per_dim"]) == pytest.approx(cond["marginal_bits_per_dim"])
    assert float(c["conditional_bits_per_dim"]) == pytest.approx(cond["bits_per_dim"])
    assert float(c["accuracy"]) == pytest.approx(cond["accuracy"])
    assert float(u["marginal_bits_per_dim"]) == pytest.approx(uncond["bits_per_dim"])
    assert (c["conditional"], u["conditional"]) == ("True", "False")
    assert c["group"] == u["group"] == "A"  # same split, examples, levels, shape, k
    assert {c["rank"], u["rank"]} == {"1", "2"}
    # Same test examples and noise key (the trainer's eval_test.npz): paired.
    second = c if c["rank"] == "2" else u
    assert second["significance_test"] == "paired", second["note"]
    assert float(second["paired_diff_marginal_bits_per_dim"]) == pytest.approx(
        float(second["marginal_bits_per_dim"])
        - float((u if second is c else c)["marginal_bits_per_dim"])
    )
    assert "cond:all+aux0.01" in c["model"]
    printed = [line for line in stdout.splitlines() if line.startswith("A ")]
    table = {re.split(r"\s{2,}", line)[2]: line for line in printed}  # group, rank, run, ...
    assert set(table) == {cond_run.name, uncond_run.name}, stdout
    marginal = f"{cond['marginal_bits_per_dim']:.4f} ± {cond['marginal_bits_per_dim_se']:.4f}"
    assert f"{marginal} (marginal)" in table[cond_run.name]
    assert f"{cond['bits_per_dim']:.4f}" in table[cond_run.name]
    assert f"{uncond['bits_per_dim']:.4f}" in table[uncond_run.name]
    assert "(marginal)" not in table[uncond_run.name]
    for name in ("comparison.csv", "comparison.md", "learning_curves.png"):
        assert (out_dir / name).exists(), name


# -- 5. every config file's :smoke variant trains (or, for other families' catalog-data
#       configs, builds and traces its model) ----------------------------------------------

CONFIG_FILES = sorted(
    os.path.basename(p)[: -len(".py")] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
)
# toy_* configs: tests/test_toy_tables.py; base: no experiment of its own.
IMAGE_CONFIGS = [n for n in CONFIG_FILES if n not in ("__init__", "base") and n[:4] != "toy_"]
# Glow's configs train here. The other families' configs share their data path with Glow's
# (glow_mnist/glow_cifar10 train here on mocked data) and each family trains its digits
# ``smoke,cond`` variant through the real loop in its own test file (tests/test_jet.py,
# tests/test_tarflow.py): here their models are built and traced, full size and :smoke
# (test_config_builds_and_traces_its_model).
TRAINED_CONFIGS = [n for n in IMAGE_CONFIGS if n.startswith("glow_")]
TRACED_CONFIGS = [n for n in IMAGE_CONFIGS if n not in TRAINED_CONFIGS]
SMOKE_VARIANTS = [(n, "smoke") for n in TRAINED_CONFIGS]
# Image shapes of the datasets the configs name (before config.data.pad_to).
DATASET_SHAPES = {
    "digits": (8, 8, 1),  # the offline stand-in of a :smoke variant
    "mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
    "downsampled_imagenet/64x64": (64, 64, 3),
}


def test_every_config_file_is_tested_and_loads_as_the_train_command_loads_it(monkeypatch):
    """The parametrizations of this section are read from the configs/ directory, so a new
    config file joins SMOKE_VARIANTS or TRACED_CONFIGS (a toy_* one: tests/test_toy_tables.py)
    by itself: every config module but base is in exactly one of them, and its ``:smoke``
    variant loads from the repository root as ``python -m experiments.train
    --config=configs/NAME.py:smoke`` loads it (ml_collections' config_flags), as the config
    ``get_config("smoke")`` returns, which the tests above use."""
    import pkgutil

    from absl import flags
    from ml_collections import config_flags

    import configs

    known = {"glow_ablation", "glow_cifar10", "glow_digits", "glow_digits_cond", "glow_mnist"}
    assert known <= set(TRAINED_CONFIGS)
    modules = sorted(m.name for m in pkgutil.iter_modules(configs.__path__))
    assert modules == [n for n in CONFIG_FILES if n != "__init__"]
    toys = [n for n in modules if n.startswith("toy_")]
    assert sorted(["base", *TRAINED_CONFIGS, *TRACED_CONFIGS, *toys]) == modules
    assert {n.split("_")[0] for n in TRACED_CONFIGS} == {"jet", "tarflow"}
    monkeypatch.chdir(ROOT)
    for name in (n for n in modules if n != "base"):
        flag_values = flags.FlagValues()
        config_flags.DEFINE_config_file("config", flag_values=flag_values)
        with warnings.catch_warnings():  # config_flags imports the file with load_module()
            warnings.simplefilter("ignore", DeprecationWarning)
            flag_values(["train", f"--config=configs/{name}.py:smoke"])
        want = importlib.import_module(f"configs.{name}").get_config("smoke")
        assert _same_config(flag_values.config, want), name


@pytest.mark.parametrize("name", TRACED_CONFIGS)
def test_config_builds_and_traces_its_model(name):
    """The config's full model and its :smoke model build through the registry (shapes only,
    ``nnx.eval_shape``: no memory for ImageNet-size models), and the smoke model's log-density
    traces on a batch of the dataset's image shape."""
    import jax
    from flax import nnx

    from flows.models import build_model

    module = importlib.import_module(f"configs.{name}")
    for variant in (None, "smoke"):
        config = module.get_config(variant)
        assert config.data.name in DATASET_SHAPES, config.data.name
        h, w, c = DATASET_SHAPES[config.data.name]
        if config.data.get("pad_to"):
            h, w = config.data.pad_to
        model = nnx.eval_shape(
            lambda config=config, shape=(h, w, c): build_model(
                config.model, shape, 10, rngs=nnx.Rngs(0)
            )
        )
        x = jax.ShapeDtypeStruct((2, h, w, c), jax.numpy.float32)
        context = jax.ShapeDtypeStruct((2,), jax.numpy.int32) if config.model.conditional else None
        log_p = jax.eval_shape(lambda m, v, y: m.log_prob(v, context=y), model, x, context)
        assert log_p.shape == (2,), (name, variant)


def _as_dict(config) -> dict:
    return json.loads(config.to_json())


def _same_config(a, b) -> bool:
    return _as_dict(a) == _as_dict(b)


@pytest.mark.parametrize("base", ["glow_digits", "glow_cifar10"])
def test_ablation_cell_is_its_base_config_with_the_cell(base):
    """glow_ablation's :smoke is the default cell of the digits smoke run (trained above, as
    glow_digits:smoke); any other cell differs from its base config in the cell only."""
    from configs import glow_ablation

    base_config = importlib.import_module(f"configs.{base}").get_config("smoke")
    suffix = ",cifar10" if base == "glow_cifar10" else ""
    assert _same_config(glow_ablation.get_config(f"smoke{suffix}"), base_config)
    cell = _as_dict(glow_ablation.get_config(f"reverse,additive,smoke{suffix}"))
    assert (cell["model"]["permutation"], cell["model"]["coupling"]) == ("reverse", "additive")
    cell["model"].update(permutation="conv1x1_lu", coupling="affine")
    assert cell == _as_dict(base_config)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, variant", SMOKE_VARIANTS, ids=[f"{n}:{v}" for n, v in SMOKE_VARIANTS]
)
def test_smoke_variant_trains(name, variant, request, tmp_path):
    module = importlib.import_module(f"configs.{name}")
    config = _config_with(module, variant, {})
    # The digits runs of the fixtures are these configs (with the fixture's overrides): reuse.
    for fixture in RUNS if config.model.name == "glow" else ():  # the fixtures are Glows
        run = request.getfixturevalue(fixture)
        if _same_config(_config_with(module, variant, run.overrides), run.config):
            config, record = run.config, run.record
            break
    else:
        assert name not in ("glow_digits", "glow_digits_cond"), "a fixture trains it"
        assert config.train.num_train_steps <= 20
        workdir = str(tmp_path / "run")
        if config.data.name in CATALOG_DATASETS:
            config.data.data_dir = str(tmp_path / "tfds")
            with mock_data(num_examples=40):
                record = train_and_evaluate(config, workdir)
        else:
            record = train_and_evaluate(config, workdir)
        saved = _read_json(os.path.join(workdir, "eval_test.json"))
        assert saved["bits_per_dim"] == record["bits_per_dim"]
    assert _finite(record["bits_per_dim"]) and record["bits_per_dim"] > 0
    assert record["train_steps"] == config.train.num_train_steps
    if config.data.name in CATALOG_DATASETS:
        channels = {"mnist": 1, "cifar10": 3}[config.data.name]
        assert record["image_shape"] == [32, 32, channels] and record["num_bins"] == 256
        assert record["num_examples"] == 40  # the mocked test split


# -- 6. out-of-distribution evaluation --------------------------------------------------------

OOD_CASES = [("uncond_run", "photo_patches"), ("cond_run", "digits_inverted:test")]


@pytest.mark.slow
@pytest.mark.parametrize("run, dataset", OOD_CASES, ids=[r for r, _ in OOD_CASES])
def test_evaluate_against_an_offline_ood_set(run, dataset, request, cli):
    """``--dataset=NAME[:SPLIT]`` (split default test): both sets' bits/dim of p(x) (the
    marginal for the conditional run), the AUROC, the record and the histogram."""
    run = request.getfixturevalue(run)
    name = dataset.split(":")[0]
    out = _ok(cli("evaluate", f"--workdir={run.workdir}", f"--dataset={dataset}"))
    path = os.path.join(run.workdir, f"eval_ood_{name}_test.json")
    png = os.path.join(run.workdir, f"ood_{name}_test.png")
    assert out.strip().endswith(f"-> {path}, {png}"), out
    record, own = _read_json(path), run.eval_test
    assert (record["in_split"], record["ood_split"]) == ("digits:test", f"{name}:test")
    assert record["in_num_examples"] == record["ood_num_examples"] == 300
    for prefix in ("in", "ood"):
        mean, se = record[f"{prefix}_bits_per_dim"], record[f"{prefix}_bits_per_dim_se"]
        assert _finite(mean, se) and mean > 0 and se > 0, prefix
    assert _finite(record["auroc"]) and 0.0 <= record["auroc"] <= 1.0
    # The same checkpoint, parameters and noise as the run's own test evaluation, so the
    # in-distribution numbers are its bits/dim of p(x), example for example.
    field = "marginal_bits_per_dim" if run.config.model.conditional else "bits_per_dim"
    assert record["score"] == field and record["conditional"] == run.config.model.conditional
    assert record["in_bits_per_dim"] == pytest.approx(own[field], abs=1e-5)
    assert record["in_bits_per_dim_se"] == pytest.approx(own[f"{field}_se"], abs=1e-5)
    for key in ("checkpoint", "checkpoint_step", "parameters", "num_bins", "image_shape"):
        assert record[key] == own[key], key
    with Image.open(png) as image:
        assert image.format == "PNG" and min(image.size) >= 400


@pytest.mark.slow
def test_evaluate_against_a_dataset_of_another_shape_is_one_line_error(uncond_run, tmp_path, cli):
    """A workdir of a run on 16x16x1 images with 256 levels (its config.json and
    data_info.json): the OOD set is checked before a model is loaded. (An unknown dataset is
    ``load_split``'s one-line error: tests/test_bad_inputs.py, tests/test_data.py.)"""
    other = tmp_path / "run16"
    other.mkdir()
    config = _read_json(os.path.join(uncond_run.workdir, "config.json"))
    info = _read_json(os.path.join(uncond_run.workdir, "data_info.json"))
    info.update(image_shape=[16, 16, 1], num_bins=256)
    for file, content in (("config.json", config), ("data_info.json", info)):
        (other / file).write_text(json.dumps(content))
    result = cli("evaluate", f"--workdir={other}", "--dataset=photo_patches")
    assert_one_line_error(result, "ConfigError", "photo_patches:test", "8x8x1", "16x16x1", "256")
    assert sorted(os.listdir(other)) == ["config.json", "data_info.json"]


def test_ood_data_check_names_both_shapes_and_the_offline_sets():
    from flows.data import ImageData
    from flows.errors import ConfigError
    from flows.ood import check_same_data

    def data(shape, num_bins):
        return ImageData(np.zeros((2, *shape), np.uint8), np.zeros(2, np.int32), num_bins, 1, "x")

    check_same_data(data(DIGITS_SHAPE, 17), [8, 8, 1], 17, "digits")  # same: no error
    for other in (data(DIGITS_SHAPE, 256), data((28, 28, 1), 17)):
        with pytest.raises(ConfigError) as info:
            check_same_data(other, [8, 8, 1], 17, "digits")
        message = str(info.value)
        assert "\n" not in message and "8x8x1 images with 17 levels (digits)" in message
        assert f"x has {'x'.join(map(str, other.image_shape))} images" in message
        assert "photo_patches, digits_inverted" in message


# -- 7. TensorBoard --------------------------------------------------------------------------


def _warmup_cosine(lr, warmup, total, n):
    """configs/glow_digits.py's schedule after ``n`` updates (linear warmup from lr / warmup,
    then cosine decay to 1% of lr), written out independently of flows.train.optim."""
    if n < warmup:
        return lr * (1 / warmup + (1 - 1 / warmup) * n / warmup)
    t = min(n - warmup, total - warmup) / (total - warmup)
    return lr * (0.01 + 0.99 * (1 + math.cos(math.pi * t)) / 2)


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS)
def test_tensorboard_event_files_hold_the_metrics(run, request):
    """The run's event file, read back by TensorBoard's reader, holds every field of every
    metrics.jsonl record at its step (float32), the test bits/dim and the final sample grid
    (the grid of samples.png); metrics.jsonl has the learning rate of each logged step."""
    import io  # here, to keep this section's changes together

    from tests.tensorboard_checks import assert_events_match_metrics

    run = request.getfixturevalue(run)
    workdir, config = run.workdir, run.config
    assert len(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))) == 1
    acc = assert_events_match_metrics(workdir, run.eval_test)

    logged = [r for r in _metrics(workdir) if "train_bpd" in r]
    assert [r["step"] for r in logged] == [5, 10, 15, 20]
    for r in logged:  # no step was skipped: the update of step s is the schedule's (s - 1)-th
        want = _warmup_cosine(config.optim.lr, config.optim.warmup_steps, 20, r["step"] - 1)
        assert r["lr"] == pytest.approx(want, rel=1e-6), r
        assert r["nonfinite_steps"] == 0 and _finite(r["grad_norm"], r["train_loss"])

    assert acc.Tags()["images"] == ["samples/final"]  # sample_every = 0: no periodic grids
    (image,) = acc.Images("samples/final")
    assert image.step == run.record["train_steps"] == 20
    grid = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("L"))
    with Image.open(os.path.join(workdir, "samples.png")) as png:
        np.testing.assert_array_equal(np.asarray(png), grid)
        # 16 samples: a row of 2 per class (10), or 4 x 4.
        want = (10, [2]) if run.config.model.conditional else (4, [4])
        assert (_grid(png)["rows"], _grid(png)["columns"]) == want


def test_logged_learning_rate_is_the_one_the_optimizer_used_with_skipped_steps():
    """``lr`` of a record is ``learning_rate_of_step``: checked against the count optax's
    schedule keeps (advanced only by applied updates) with non-finite steps 2, 3 and 7."""
    import jax
    import optax

    from flows.train.optim import learning_rate_of_step, learning_rate_schedule, make_optimizer

    optim = glow_digits.get_config("smoke").optim
    tx, schedule = make_optimizer(optim, 20), jax.jit(learning_rate_schedule(optim, 20))
    params = {"w": np.ones(3, np.float32)}
    state, update = tx.init(params), jax.jit(tx.update)
    is_schedule = lambda x: isinstance(x, optax.ScaleByScheduleState)
    for step in range(1, 12):
        (count,) = [x.count for x in jax.tree.leaves(state, is_leaf=is_schedule) if is_schedule(x)]
        used = float(schedule(count))  # the rate this step's update is made with
        grads = {"w": np.full(3, np.nan if step in (2, 3, 7) else 1.0, np.float32)}
        _, state = update(grads, state, params)
        skipped, this = int(state.total_notfinite), int(state.notfinite_count) > 0
        assert learning_rate_of_step(schedule, step, skipped, this) == used, step


# -- 8. experiments.latents ------------------------------------------------------------------

LATENT_ARGS = ("--pairs=2", "--steps=4", "--rows=3", "--alphas=-1,0,1", "--classes=3,8")


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS)
def test_latents_round_trip_interpolation_class_direction_label_swap(run, request, cli):
    run = request.getfixturevalue(run)
    conditional = bool(run.config.model.conditional)
    out = _ok(cli("latents", f"--workdir={run.workdir}", *LATENT_ARGS))
    directory = os.path.join(run.workdir, "latents")
    assert out.strip().endswith(f"-> {directory}"), out
    record = _read_json(os.path.join(directory, "latents_test.json"))
    assert record["split"] == "digits:test" and record["num_examples"] == 300
    assert record["dtype"] == "float32" and record["conditional"] is conditional
    assert record["encoded_x"] == "mid-cell x = (v + 0.5) / K"
    assert record["checkpoint_step"] == run.eval_test["checkpoint_step"]
    assert record["parameters"] == run.eval_test["parameters"] == "ema"
    error = record["reconstruction_max_abs_error"]
    direction = record["class_direction"]
    assert _finite(error, direction["direction_norm"], direction["direction_rms"])
    # float32 round trip through ~20 layers on the unit scale: a few ulps of values <= 1,
    # measured ~1e-6 (here and on the 3000-step models); 1e-4 leaves two orders of magnitude
    # and is still 300x below half a cell (1/34), so every image quantizes back exactly.
    assert 0 <= error < 1e-4 and record["exact_reconstruction_fraction"] == 1.0
    assert f"max |x - f^-1(f(x))| = {error:.2e}" in out and "300/300 images" in out
    assert (direction["from_class"], direction["to_class"]) == (3, 8)
    assert direction["alphas"] == [-1.0, 0.0, 1.0] and len(direction["images"]) == 3
    assert direction["num_from"] > 0 and direction["num_to"] > 0
    assert record["interpolation"]["t"] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    # (rows, columns per group): left image + 4 interpolants + right image per pair; 3
    # images x 3 alphas; conditional: 10 labels x 3 images.
    expected = {
        "interpolation.png": (2, [1, 4, 1]),
        "class_direction_3_to_8.png": (3, [1, 1, 1]),
    }
    if conditional:
        expected["label_swap.png"] = (10, [1, 1, 1])
        assert record["label_swap"]["images"] == [0, 1, 2]
    assert sorted(os.listdir(directory)) == sorted([*expected, "latents_test.json"])
    for name, want in expected.items():
        with Image.open(os.path.join(directory, name)) as image:
            grid = _grid(image)
            assert image.mode == "L" and (grid["rows"], grid["columns"]) == want, name


@pytest.mark.slow
def test_latents_unknown_class_is_one_line_error(uncond_run, cli):
    args = ("--split=validation", "--classes=0,12")
    assert_one_line_error(
        cli("latents", f"--workdir={uncond_run.workdir}", *args), "class 12 is not in 0..9"
    )
    assert not os.path.exists(
        os.path.join(uncond_run.workdir, "latents", "latents_validation.json")
    )
