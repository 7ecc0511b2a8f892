"""Shared command-line plumbing: expected failures become one line on stderr and exit 2."""

from __future__ import annotations

import sys

from absl import app, flags, logging

from flows.errors import FlowsError

EXPECTED_ERRORS = (FlowsError, ValueError, KeyError, OSError)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def run(main) -> None:
    """``absl.app.run(main)``, with expected errors reported as one line and exit status 2."""

    def wrapped(argv):
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
        try:
            return main(argv)
        except EXPECTED_ERRORS as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            sys.exit(2)

    def parse_flags(argv):
        # A misspelt --config.a.b override fails inside flag parsing: one line, exit 2.
        try:
            return flags.FLAGS(argv)
        except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
            message = one_line(e).replace("\\n", " ").replace("\\'", "'")
            if "Traceback" in message:  # config_flags wraps a config file's own error
                message = "config file error: " + message.rsplit("Error: ", 1)[-1]
            print(f"error: bad command line: {message}", file=sys.stderr)
            sys.exit(2)

    app.run(wrapped, flags_parser=parse_flags)
