"""Text for people: the closest valid name for a typo, the first line of a message, a value as it is typed."""

import difflib
import re


def closest(word: str, choices, n: int = 2) -> list[str]:
    return difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)


def did_you_mean(word, choices) -> str:
    """'; did you mean 'mlp'?' when a choice is close to `word`, else ''."""
    if not isinstance(word, str):
        return ""
    matches = closest(word, choices)
    return f"; did you mean {' or '.join(repr(m) for m in matches)}?" if matches else ""


def first_line(text: str) -> str:
    """The first non-blank line, stripped: what an error line keeps of a long message."""
    return next((line.strip() for line in str(text).splitlines() if line.strip()), str(text))


def show_value(value) -> str:
    """A value as the user would type it on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(show_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{show_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def quote_override(value: str) -> str:
    """A Hydra override value that stays one string whatever characters a path holds."""
    if re.fullmatch(r"[\w/.\-:]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def unquote_override(value: str) -> str:
    """The text of an override value that quote_override (or the user) quoted."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1].replace("\\" + value[0], value[0]).replace("\\\\", "\\")
    return value


def override_key(override: str) -> str:
    """`+model.x=1` -> `model.x`."""
    return override.lstrip("+~").split("=", 1)[0]
