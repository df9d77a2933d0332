"""``cnncompress`` command line: thin argument parsing over library functions.

Exit codes: 0 success, 2 bad input (one line on stderr naming the file/value and the problem), 1 internal error.
``--debug`` shows the traceback. Sub-commands live in ``cnncompress.commands.*`` and are discovered here.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from .errors import InputError


def build_parser() -> argparse.ArgumentParser:
    from . import commands
    parser = argparse.ArgumentParser(prog="cnncompress", description="Make CNNs small and fast, and measure it.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{module.name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
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
        print(f"cnncompress: internal error: {type(error).__name__}: {error} (rerun with --debug)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
