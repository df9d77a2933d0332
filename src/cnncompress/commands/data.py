"""``cnncompress data fetch|list``: fetch and verify the offline assets; list dataset names."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("data", help="fetch/verify offline assets, list datasets")
    parser.add_argument("action", choices=["fetch", "list"])
    parser.add_argument("--only", nargs="*", help="asset names to fetch (default: all)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from cnncompress.data import assets, available
    if args.action == "list":
        for name, description in available().items():
            print(f"{name:16s} {description}")
        for name, asset in assets.ASSETS.items():
            print(f"asset {name:10s} {asset.requirement:18s} {asset.purpose}")
        return 0
    for name in args.only or list(assets.ASSETS):
        path = assets.fetch(name)
        print(f"{name}: {path} (sha256 ok)")
    return 0
