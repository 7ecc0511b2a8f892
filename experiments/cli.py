"""Shared command-line plumbing: user errors become one line on stderr and exit status 2.

A user error is one of the project's own types (``flows.errors.FlowsError``: config, data,
checkpoint, training) or a bad command line. Anything else is a bug and keeps its traceback;
``--debug`` shows the traceback of user errors too.
"""

from __future__ import annotations

import ast
import importlib
import json
import math
import os
import sys

from absl import app, flags, logging

from flows import workdir as wd
from flows.errors import CheckpointError, ConfigError, FlowsError

_DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of every error, user errors too.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
_HELP = {"-h", "-help", "--help", "-?", "--helpshort", "-helpshort"}
_HELP_FULL = {"--helpfull", "-helpfull"}


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def no_extra_arguments(argv) -> None:
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]} (flags are --name=value)")


def use_ema(params: str) -> bool | None:
    """``--params``: 'ema' or 'raw' parameters; 'auto' (None) follows the run's
    ``config.eval.use_ema`` (``flows.train.restore.load_run``)."""
    return None if params == "auto" else params == "ema"


def finite_at_least(flag, least: float) -> None:
    """Registers a check of float flag ``flag`` (its holder): a finite number >= ``least``
    (NaN and infinities refused); a bad value is one line at flag parsing, before ``main``."""
    flags.register_validator(
        flag.name,
        lambda v: v is None or (math.isfinite(v) and v >= least),
        message=f"must be a finite number >= {least:g}",
    )


def numbers_at_least(flag, least: float) -> None:
    """As ``finite_at_least`` for a list flag whose items are numbers (at least one)."""

    def ok(values) -> bool:
        if values is None:  # a flag without a default, not given
            return True
        try:
            numbers = [float(v) for v in values]
        except ValueError:
            return False
        return bool(numbers) and all(math.isfinite(v) and v >= least for v in numbers)

    flags.register_validator(
        flag.name, ok, message=f"must be one or more finite numbers >= {least:g}, comma-separated"
    )


def check_run_workdir(workdir: str) -> None:
    """A one-line ``CheckpointError`` unless ``workdir`` (a ``--workdir`` to read) exists and
    holds a training run whose ``config.json`` and ``data_info.json`` can be read."""
    if not os.path.isdir(workdir):
        raise CheckpointError(f"--workdir {workdir} does not exist (give a training workdir)")
    for name in (wd.CONFIG, wd.DATA_INFO):
        file = wd.path(workdir, name)
        if not os.path.exists(file):
            raise CheckpointError(
                f"--workdir {workdir} is not a training workdir (no {name}); give the "
                "--workdir of experiments.train"
            )
        check_json_object(file)


def check_json_object(file: str) -> None:
    """A one-line ``CheckpointError`` unless ``file`` (a run's JSON file) holds a JSON object."""
    try:
        ok = isinstance(wd.read_json(file), dict)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        ok, why = False, getattr(e, "strerror", None) or str(e)
    else:
        why = "not a JSON object"
    if not ok:
        raise CheckpointError(f"{file} cannot be read ({why}); the workdir is damaged")


def split_of_run(config, split: str):
    """Split ``split`` ('train', 'validation', 'test') of the run's data, read batch by batch
    (``stream=True``, nothing kept: the tools read it once); a one-line ``ConfigError`` when
    the run has none."""
    from flows import data as data_lib  # TFDS: only for the tools that read data

    data = data_lib.load_datasets(config.data, stream=True, cache_bytes=0)[split]
    if data is None:
        raise ConfigError(f"the run has no {split} split (data.validation_size = 0)")
    return data


def _flag_value(argv, name: str) -> str | None:
    """The value of ``--name=VALUE`` or ``--name VALUE`` in ``argv`` (the last one), or None."""
    value = None
    for i, arg in enumerate(argv[1:], 1):
        if arg == "--":
            break
        for prefix in (f"--{name}", f"-{name}"):
            if arg.startswith(prefix + "="):
                value = arg[len(prefix) + 1 :]
            elif arg == prefix and i + 1 < len(argv):
                value = argv[i + 1]
    return value


def _defines_get_config(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "get_config":
            return True
        if isinstance(node, ast.Import | ast.ImportFrom):
            if any((a.asname or a.name) == "get_config" for a in node.names):
                return True
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "get_config" for t in node.targets
        ):
            return True
    return False


def check_config_file(value: str) -> None:
    """A one-line ``ConfigError`` naming the file of ``--config=FILE[:VARIANT]`` when it does
    not exist, cannot be read, does not parse, or defines no ``get_config`` (read, not run:
    ml_collections runs it afterwards)."""
    file = value.split(":", 1)[0]
    if not file:
        raise ConfigError(f"--config={value} names no config file")
    if not os.path.isfile(file):
        what = "is a directory, not a config file" if os.path.isdir(file) else "does not exist"
        raise ConfigError(f"config file {file} {what}; see --help for the config files")
    try:
        with open(file, "rb") as f:
            source = f.read()
    except OSError as e:
        raise ConfigError(f"config file {file} cannot be read ({e.strerror})") from None
    try:
        tree = ast.parse(source, filename=file)
    except (SyntaxError, ValueError) as e:
        where = f" at line {e.lineno}" if getattr(e, "lineno", None) else ""
        msg = getattr(e, "msg", None) or str(e)
        raise ConfigError(f"config file {file} does not parse: {msg}{where}") from None
    if not _defines_get_config(tree):
        raise ConfigError(f"config file {file} has no get_config() function")


def config_files(command: str) -> list[tuple[str, list[str] | None]]:
    """``(path, variants)`` of every config file in ``configs/`` whose docstring runs
    ``python -m <command>``, with the names of its ``VARIANTS`` (what
    ``configs.base.with_variants`` applies; None when it has none)."""
    found = []
    for name in sorted(os.listdir(CONFIGS)):
        if not name.endswith(".py") or name.startswith("_"):
            continue
        try:
            with open(os.path.join(CONFIGS, name), "rb") as f:
                doc = ast.get_docstring(ast.parse(f.read())) or ""
        except (OSError, SyntaxError, ValueError):
            continue
        if f"python -m {command} " not in doc:
            continue
        variants = getattr(importlib.import_module(f"configs.{name[:-3]}"), "VARIANTS", None)
        found.append((f"configs/{name}", [str(v) for v in variants or ()] or None))
    return found


def _config_files_help(command: str) -> str:
    lines = ["", "config files (--config=FILE or FILE:VARIANT[,VARIANT...]):"]
    for file, variants in config_files(command):
        listed = ", ".join(variants) if variants else "none"
        lines.append(f"  {file} (variants: {listed})")
    return "\n".join(lines) + "\n"


def _fail(e: FlowsError) -> None:
    print(f"error: {one_line(e)}", file=sys.stderr)
    sys.exit(2)


def run(main, *, config_files_of: str | None = None) -> None:
    """``absl.app.run(main)``, with user errors reported as one line and exit status 2.

    ``--help`` (``-h``) and ``--helpfull`` print the usage and exit 0; ``config_files_of``
    (a command, e.g. ``"experiments.train"``) adds the config files that run it to the
    help. A ``--config`` file is checked before flag parsing (``check_config_file``)."""

    def wrapped(argv):
        # orbax logs every save at INFO, and orbax / TFDS log their own internals at WARNING
        # (e.g. a missing dataset_info.json right before our one-line DatasetError).
        logging.set_verbosity(logging.INFO if _DEBUG.value else logging.ERROR)
        try:
            return main(argv)
        except FlowsError as e:
            if _DEBUG.value:
                raise
            _fail(e)

    def parse_flags(argv):
        asked = set(argv[1:])
        if asked & (_HELP | _HELP_FULL):
            app.usage(shorthelp=not asked & _HELP_FULL, writeto_stdout=True)
            if config_files_of:
                print(_config_files_help(config_files_of), end="")
            sys.exit(0)
        config = _flag_value(argv, "config") if "config" in flags.FLAGS else None
        if config is not None:
            try:
                check_config_file(config)
            except FlowsError as e:
                if "--debug" in argv:
                    raise
                _fail(e)
        # A misspelt --config.a.b override fails inside flag parsing: one line, exit 2.
        try:
            return flags.FLAGS(argv)
        except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
            if "--debug" in argv:
                raise
            message = one_line(e).replace("\\n", " ").replace("\\'", "'")
            if "Traceback" in message:  # config_flags wraps a config file's own error
                file = config.split(":", 1)[0] if config else "error"
                message = f"config file {file}: " + message.rsplit("Error: ", 1)[-1]
            print(f"error: bad command line: {message}", file=sys.stderr)
            sys.exit(2)

    app.run(wrapped, flags_parser=parse_flags)
