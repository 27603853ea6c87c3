"""Nested dicts (a config as plain Python values) read by dotted keys."""


def walk(node: dict, prefix: str = ""):
    """Every (dotted key, value) pair of `node`, inner dicts included, depth first."""
    for key, value in node.items():
        name = f"{prefix}{key}"
        yield name, value
        if isinstance(value, dict):
            yield from walk(value, f"{name}.")


def flatten(node: dict) -> dict:
    """{'optimizer': {'lr': 0.1}} -> {'optimizer.lr': 0.1}: the leaves only."""
    return {key: value for key, value in walk(node) if not isinstance(value, dict)}


def lookup(node, key: str) -> tuple[bool, object]:
    """(found, value) for the dotted `key` in `node`."""
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node
