"""``cnncompress methods [NAME ...]``: every method with its description, options (type, default, range), the layers
and structures it handles, and what of its saving is real (``methods.info`` / ``methods.registry.options``)."""
from __future__ import annotations

import json


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("methods", help="list the compression methods, their options and what they handle")
    parser.add_argument("names", nargs="*", metavar="NAME", help="only these methods (default: all)")
    parser.add_argument("--json", action="store_true", help="one JSON object per method")
    parser.set_defaults(func=run)


def _option(entry: dict) -> str:
    text = entry["option"] + (f": {entry['type']}" if entry["type"] else "")
    if entry["default"] is not None:
        text += f" = {entry['default']!r}"
    if "range" in entry:
        text += f" in {entry['range']}"
    if "choices" in entry:
        text += f" one of {'|'.join(entry['choices'])}"
    return text


def run(args) -> int:
    from cnncompress import methods
    from cnncompress.methods.registry import options
    for name in args.names or methods.available():
        info = methods.info(name)
        record = {"method": name, "family": info.family, "paper": info.paper, "description": info.description,
                  "handles": info.handles, "size": info.size, "speed": info.speed, "data": info.data_option,
                  "options": options(name)}
        if args.json:
            print(json.dumps(record, default=repr))
            continue
        print(f"{name} ({info.family or 'other'}; size saving {info.size}, speed-up {info.speed}) - {info.description}")
        print(f"    handles: {info.handles or 'see its documentation'}")
        if info.data_option:
            print(f"    looks at data: {info.data_option}= (the run's training split unless given)")
        print(f"    options: {'; '.join(_option(o) for o in record['options']) or 'none'}")
        print(f"    paper: {info.paper}")
    return 0
