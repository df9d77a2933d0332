"""``cnncompress`` command line: thin argument parsing over library functions.

Exit codes: 0 success, 2 bad input (one line on stderr naming the file/value and the problem; also a second run
on an ``--out`` folder another run holds), 3 environment (disk full, read-only or unwritable folder, an unusable
cache folder: one line ``cnncompress: environment error: <path>: <cause>``), 1 internal error.
``--debug`` shows the traceback. Sub-commands live in ``cnncompress.commands.*`` and are discovered here.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import pkgutil
import sys
from pathlib import Path

from cnncompress.errors import ENVIRONMENT_EXIT, InputError, environment_fault

CACHE_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EEXIST, errno.EISDIR})
"""Besides the environment codes, what a cache folder that is missing or not a folder raises."""


def build_parser() -> argparse.ArgumentParser:
    from cnncompress import commands
    parser = argparse.ArgumentParser(prog="cnncompress", description="Make CNNs small and fast, and measure it.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{module.name}").add_parser(subparsers)
    parser.commands = subparsers.choices  # {command: its parser}, for ``_parse``
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args``, except that a command's positionals may sit on either side of its flags
    (``predict RUN --model X photo.jpg``): what plain parsing leaves over is parsed again by the command's own
    parser, intermixed (``argparse.parse_intermixed_args``); anything it cannot place is the usual error, exit 2."""
    args, extra = parser.parse_known_args(argv)
    command = getattr(args, "command", None)
    if not extra or command not in argv:
        return parser.parse_args(argv)
    own = parser.commands[command].parse_intermixed_args(argv[argv.index(command) + 1:])
    vars(args).update(vars(own))
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        args = _parse(parser, argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except SystemExit as exit_:  # argparse: 2 on bad arguments
        return int(exit_.code or 0)
    except InputError as error:
        if debug:
            raise
        print(f"cnncompress: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cnncompress: interrupted; finished epochs and rows are kept, rerun to resume", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - last resort, one line unless --debug
        if debug:
            raise
        fault = environment_fault(error) or _cache_fault(error)
        if fault:
            path = fault[0] if fault[0] != "?" else _out_argument(argv) or "?"  # a write that lost its file name
            print(f"cnncompress: environment error: {path}: {fault[1]}", file=sys.stderr)
            return ENVIRONMENT_EXIT
        print(f"cnncompress: internal error: {type(error).__name__}: {error} (rerun with --debug)", file=sys.stderr)
        return 1


def _out_argument(argv: list[str]) -> str | None:
    """The command's ``--out`` value: where a failed write that names no file was writing."""
    for index, arg in enumerate(argv):
        if arg == "--out" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--out="):
            return arg[len("--out="):]
    return None


def _cache_fault(error: BaseException) -> tuple[str, str] | None:
    """``(path, cause)`` for an OSError on the asset/kernel cache folder (``$CNNCOMPRESS_CACHE``, default
    ``~/.cache/cnncompress``) that is missing, not a folder or unwritable; else None."""
    if not isinstance(error, OSError) or error.errno not in CACHE_ERRNOS or not error.filename:
        return None
    root = Path(os.environ.get("CNNCOMPRESS_CACHE") or Path.home() / ".cache" / "cnncompress").absolute()
    path = Path(os.fsdecode(error.filename)).absolute()
    if path != root and root not in path.parents and path not in root.parents:
        return None
    return str(path), f"{os.strerror(error.errno)} (the cache folder {root} is unusable: set CNNCOMPRESS_CACHE " \
                      "to a writable folder)"


if __name__ == "__main__":
    sys.exit(main())
