"""Checks on the composed config, run before any work: a bad value is one ConfigError naming the key,
the value and what is allowed, never a traceback from deep inside a run.

Cheapest first: the keys every run needs, a rule per key (types and ranges), combinations of keys,
then the `_target_` names (with the closest valid name for a typo). The dry build of the model,
initializer and optimizer on the meta device comes after these, in dlrun.engine.build."""

import contextlib
import importlib
import inspect
import logging
import os
import pkgutil
import traceback

from hydra.utils import get_object
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dlrun.config.schema import REQUIRED, SCHEMA, Rule
from dlrun.core.errors import ConfigError, DlrunError
from dlrun.core.nested import lookup
from dlrun.core.text import did_you_mean, first_line, show_value

# What each `_target_` must be: the key, what kind of thing, and a test on the located object.
TARGETS = {
    "model": ("model class", callable),
    "optimizer": ("optimizer (a torch.optim.Optimizer class)", lambda obj: _is_subclass(obj, "torch.optim", "Optimizer")),
    "initializer.fn": ("initialisation function", callable),
    "scheduler.fn": ("lr scheduler", callable),
}


def check_config(cfg) -> dict:
    """Raise ConfigError for the first value in `cfg` that is not allowed; return the config as plain values."""
    values = resolve(cfg)
    for key in REQUIRED:
        if not lookup(values, key)[0]:
            raise DlrunError(f"{key}: missing from the config, and every run needs it (removed with ~{key.split('.')[0]}?)")
    check_rules(values, SCHEMA, per_block="channels" in (values.get("model") or {}))
    _check_combinations(values)
    for key, (kind, test) in TARGETS.items():
        found, node = lookup(values, key)
        if found and isinstance(node, dict) and "_target_" in node:
            locate(f"{key}._target_", node["_target_"], kind, test)
    return values


def check_rules(values: dict, rules: dict[str, Rule], per_block: bool = False) -> None:
    """Each rule on the value of its key, where `values` has the key. `per_block`: a CNN, whose block
    options may be lists with one value per block."""
    for key, rule in rules.items():
        found, value = lookup(values, key)
        if found:
            problem = (rule if per_block else getattr(rule, "scalar", rule))(value)
            if problem:
                raise ConfigError(key, show_value(value), problem)


def _check_combinations(values: dict) -> None:
    opt = values.get("optimizer") or {}
    if opt.get("nesterov") and (not opt.get("momentum") or opt.get("dampening")):
        raise ConfigError(
            "optimizer.nesterov",
            "true",
            f"needs optimizer.momentum > 0 and optimizer.dampening=0 "
            f"(they are {show_value(opt.get('momentum'))} and {show_value(opt.get('dampening', 0))})",
        )
    model = values.get("model") or {}
    if model.get("freeze_backbone") and str(model.get("weights", "none")).lower() in ("none", "null"):
        raise ConfigError(
            "model.freeze_backbone",
            "true",
            "needs pretrained weights, or only a head on a random backbone learns: model.weights=default "
            "(downloaded once), or offline the path of the architecture's weights file "
            "(model.weights=/path/to/resnet18-f37072fd.pth)",
        )
    clip = (values.get("trainer") or {}).get("grad_clip") or {}
    if clip.get("max_norm") is not None and clip.get("max_value") is not None:
        raise ConfigError("trainer.grad_clip", show_value(clip), "set max_norm or max_value, not both")
    start, end = ((values.get("lr_find") or {}).get(k) for k in ("start_lr", "end_lr"))
    if start is not None and end is not None and start >= end:
        raise ConfigError("lr_find.start_lr", show_value(start), f"must be below lr_find.end_lr ({show_value(end)})")


def locate(key: str, target, kind: str, test=callable):
    """The object a `_target_` names; a ConfigError saying why there is none: no such module or name (with the
    closest valid name for a typo), or a module that fails to import (with its error and where)."""
    if not isinstance(target, str) or not target:
        raise ConfigError(key, show_value(target), f"must be the dotted name of {_a(kind)}")
    try:
        with _quiet("hydra.utils"):  # get_object logs its failure as an error before raising it
            obj = get_object(target)
    except Exception:
        raise ConfigError(key, target, _why_not_found(target, kind)) from None
    if not test(obj):
        raise ConfigError(key, target, f"is not {_a(kind)}")
    return obj


def _why_not_found(target: str, kind: str) -> str:
    """Why `target` names nothing: walked as Hydra walks it, attributes first, then submodules."""
    parts = target.split(".")
    if not all(parts):
        return f"must be the dotted name of {_a(kind)} (module.Name, without leading or doubled dots)"
    obj, path = None, ""
    for part in parts:
        name = f"{path}.{part}" if path else part
        if obj is not None and hasattr(obj, part):
            obj, path = getattr(obj, part), name
            continue
        if obj is None or inspect.ismodule(obj):
            try:
                obj, path = importlib.import_module(name), name
                continue
            except ModuleNotFoundError as err:
                if err.name != name:  # the module exists, but something it imports does not
                    return _import_failed(name, err)
            except Exception as err:  # whatever the user's module raises while it loads
                return _import_failed(name, err)
        return _missing(name, path, obj, kind)
    return f"no such {kind}"


def _missing(name: str, parent: str, obj, kind: str) -> str:
    if not parent:
        return f"no such {kind}: no module named '{name}'; install it, or add the folder that holds it to PYTHONPATH"
    names = {n for n in dir(obj) if not n.startswith("_")}
    if hasattr(obj, "__path__"):  # a package: its submodules count, imported or not
        names.update(m.name for m in pkgutil.iter_modules(obj.__path__) if not m.name.startswith("_"))
    suggestion = did_you_mean(name, sorted(f"{parent}.{n}" for n in names))
    return f"no such {kind}: {parent} has no {name.rsplit('.', 1)[1]}{suggestion}"


def _import_failed(module: str, err: BaseException) -> str:
    """The user's own module (or one it imports) is broken: its error, and the file and line it comes from."""
    if isinstance(err, SyntaxError) and err.filename:
        text, filename, line = err.msg, err.filename, err.lineno
    else:
        text = first_line(str(err)) if str(err).strip() else ""
        # the frames of importlib itself are named <frozen ...>: the last other one is the offending line
        frames = [f for f in traceback.extract_tb(err.__traceback__) if not f.filename.startswith("<")]
        filename, line = (frames[-1].filename, frames[-1].lineno) if frames else (None, None)
    where = f" ({shown_path(filename)}, line {line})" if filename else ""
    return f"cannot be imported: importing {module} raised {type(err).__name__}" + (f": {text}{where}" if text else where)


def shown_path(path) -> str:
    """A path as short as it can be said: relative to the working directory when inside it."""
    path = os.path.abspath(path)
    try:
        rel = os.path.relpath(path)
    except ValueError:  # on another drive than the working directory
        return path
    return path if rel.startswith("..") else rel


def check_arguments(group: str, target, node: dict, supplied=(), skip_first: bool = False) -> None:
    """Every key of a group must be an argument of its `_target_`: a typo names the closest one."""
    try:
        params = dict(inspect.signature(locate(f"{group}._target_", target, "callable")).parameters)
    except (TypeError, ValueError):  # builtins without a signature
        return
    if skip_first and params:
        params.pop(next(iter(params)))
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    names = [n for n in params if n not in ("self", *supplied)]
    for key, value in node.items():
        if not (key.startswith("_") and key.endswith("_")) and key not in params:
            raise ConfigError(
                f"{group}.{key}",
                show_value(value),
                f"is not an argument of {target}{did_you_mean(key, names)} (its arguments: {', '.join(names) or 'none'})",
            )


def resolve(cfg) -> dict:
    """The config as plain Python values, with every ${...} resolved; a broken one names its key."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "config"
        raw = lookup(OmegaConf.to_container(cfg, resolve=False), key)[1]
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(key, raw, f"cannot be resolved ({message})") from None


@contextlib.contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    was = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _is_subclass(obj, module: str, name: str) -> bool:
    base = getattr(importlib.import_module(module), name)
    return inspect.isclass(obj) and issubclass(obj, base)
