"""Error types. An ``InputError`` is the user's fault (bad file, bad value) and becomes exit code 2."""


class InputError(Exception):
    """Bad user input: a corrupt file, a wrong shape, an unknown name, a bad config value.

    The message is one line that names the file (or value) and the problem.
    """


def input_error(path, problem: str) -> InputError:
    """Build an ``InputError`` whose message reads ``<path>: <problem>`` (first line of the problem only)."""
    lines = str(problem).strip().splitlines()
    return InputError(f"{path}: {lines[0] if lines else 'invalid'}")
