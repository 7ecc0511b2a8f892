"""Shared command-line plumbing: user errors become one line on stderr and exit status 2.

A user error is one of the project's own types (``flows.errors.FlowsError``: config, data,
checkpoint, training) or a bad command line. Anything else is a bug and keeps its traceback;
``--debug`` shows the traceback of user errors too.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from flows.errors import ConfigError, FlowsError

_DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of every error, user errors too.")


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


def split_of_run(config, split: str):
    """Split ``split`` ('train', 'validation', 'test') of the run's data, read batch by batch
    (``stream=True``, nothing kept: the tools read it once); a one-line ``ConfigError`` when
    the run has none."""
    from flows import data as data_lib  # TFDS: only for the tools that read data

    data = data_lib.load_datasets(config.data, stream=True, cache_bytes=0)[split]
    if data is None:
        raise ConfigError(f"the run has no {split} split (data.validation_size = 0)")
    return data


def run(main) -> None:
    """``absl.app.run(main)``, with user errors reported as one line and exit status 2."""

    def wrapped(argv):
        # orbax logs every save at INFO, and orbax / TFDS log their own internals at WARNING
        # (e.g. a missing dataset_info.json right before our one-line DatasetError).
        logging.set_verbosity(logging.INFO if _DEBUG.value else logging.ERROR)
        try:
            return main(argv)
        except FlowsError as e:
            if _DEBUG.value:
                raise
            print(f"error: {one_line(e)}", file=sys.stderr)
            sys.exit(2)

    def parse_flags(argv):
        # A misspelt --config.a.b override fails inside flag parsing: one line, exit 2.
        try:
            return flags.FLAGS(argv)
        except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
            if "--debug" in argv:
                raise
            message = one_line(e).replace("\\n", " ").replace("\\'", "'")
            if "Traceback" in message:  # config_flags wraps a config file's own error
                message = "config file error: " + message.rsplit("Error: ", 1)[-1]
            print(f"error: bad command line: {message}", file=sys.stderr)
            sys.exit(2)

    app.run(wrapped, flags_parser=parse_flags)
