"""CLI sub-commands. Each module here defines ``add_parser(subparsers)`` which registers one sub-command and
sets ``func=run`` on it; ``run(args) -> int`` returns the exit code. ``cli.py`` discovers them all."""
