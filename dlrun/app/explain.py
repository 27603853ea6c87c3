"""Turn an exception from a `dlrun` command into one line for the user, and an exit code."""

import errno
import re
import traceback
from importlib.resources import files
from pathlib import Path

from hydra.errors import (
    ConfigCompositionException,
    InstantiationException,
    MissingConfigException,
    OverrideParseException,
    SearchPathException,
)
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException
from yaml import MarkedYAMLError

from dlrun.config.check import shown_path
from dlrun.config.compose import known_keys
from dlrun.config.groups import CONFIG_MODULE, config_groups
from dlrun.config.schema import MOVED_KEYS
from dlrun.core.errors import ConfigError, DlrunError
from dlrun.core.text import did_you_mean, first_line, override_key


def describe(err: BaseException, overrides: list[str]) -> tuple[str, int]:
    if isinstance(err, InstantiationException) and isinstance(err.__cause__, DlrunError):
        err = err.__cause__  # a model's own ConfigError, raised while Hydra built it
    if isinstance(err, ConfigError):
        return str(err) + _target_source(err, overrides), err.exit_code
    if isinstance(err, DlrunError):
        return str(err), err.exit_code
    if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
        return _disk_error(err)
    if type(err).__name__ == "OutOfMemoryError":  # torch's, before the training loop (which names the batch size)
        return (
            f"CUDA out of memory before training ({first_line(str(err))[:120]}); try a smaller model, "
            "dataset.resize or trainer.batch_size",
            1,
        )
    message = _config_error(err, overrides)
    if message:
        return message, 2
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)) and getattr(err, "full_key", None):
        return f"{err.full_key}: missing from the config (removed with ~KEY?); `dlrun train --cfg job` shows every key", 2
    if isinstance(err, (ValueError, TypeError)) and _raised_in(err, "hydra/_internal/"):
        return _bad_override(err, overrides), 2
    return f"{type(err).__name__}: {first_line(str(err))} (run again with --verbose for the traceback)", 1


def _config_error(err: BaseException, overrides: list[str]) -> str | None:
    """Hydra's errors while it reads the config files and the command line; None for any other error."""
    if isinstance(err, MarkedYAMLError):
        return yaml_error(err)
    if isinstance(err, SearchPathException):
        found = re.search(r"directory '([^']+)' not found", str(err))
        folder = found.group(1) if found else "DIR"
        return f"--config-dir {folder}: no such folder; pass the folder that holds your group folders (model/, optimizer/, ...)"
    if isinstance(err, MissingConfigException):
        return _missing_option(err)
    if isinstance(err, OverrideParseException):
        return _unparsable(err, overrides)
    if isinstance(err, ConfigCompositionException):
        return _composition_error(err, overrides)
    if isinstance(err, InstantiationException):
        return first_line(str(err))
    return None


# Errors of the file system rather than of dlrun: a path that cannot be written, or a full disk.
DISK_ERRNOS = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.EISDIR,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
}


def _disk_error(err: OSError) -> tuple[str, int]:
    where = err.filename or "a file"
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (
            f"cannot write {where}: {err.strerror}. Files written before are intact (each is replaced only "
            "once its new version is complete); free some space, then continue with "
            "`dlrun train resume=RUN_DIR` (or resume=latest)",
            1,
        )
    # Hydra creates the run directory before dlrun runs: a failure there is the output folder's fault.
    frames = traceback.extract_tb(err.__traceback__)
    if any(frame.filename.replace("\\", "/").endswith("hydra/core/utils.py") for frame in frames):
        return (
            f"hydra.run.dir={where}: must be a writable folder ({err.strerror}); choose another with "
            "hydra.run.dir=PATH (hydra.sweep.dir=PATH with -m)",
            2,
        )
    return f"{where}: {err.strerror}", 2


def _raised_in(err: BaseException, path: str) -> bool:
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and path in frames[-1].filename.replace("\\", "/")


def _bad_override(err: BaseException, overrides: list[str]) -> str:
    """Hydra's own checks of a group choice that is not a name (`dataset=0`, say) end as plain errors."""
    empty = _empty_key(overrides)
    if empty:
        return empty
    groups = config_groups()
    for override in overrides:
        group, _, option = override.partition("=")
        if group in groups and option not in groups[group]:
            return f"{group}={option}: no such option{did_you_mean(option, groups[group])} (options: {', '.join(groups[group])})"
    return f"cannot compose the config: {first_line(str(err))}"


def _missing_option(err: MissingConfigException) -> str:
    path = err.missing_cfg_file or ""
    group, _, option = path.rpartition("/")
    options = err.options or config_groups().get(group, [])
    if group:
        return f"{group}={option}: no such option{did_you_mean(option, options)} (options: {', '.join(options)})"
    primary = re.match(r"Cannot find primary config '([^']+)'", str(err))
    if primary:
        return (
            f"--config-name {primary.group(1)}: no {primary.group(1)}.yaml in the shipped configs or your --config-dir; "
            "pass the name of a YAML file in the --config-dir folder, without .yaml"
        )
    return first_line(str(err))


def _composition_error(err: ConfigCompositionException, overrides: list[str]) -> str:
    text = str(err)
    if re.match(r"Could not (override|delete) ''", text):
        return _empty_key(overrides) or "an override names no key: write KEY=VALUE, or ~KEY to delete one"
    package = re.search(r"Could not override '([^'@]+)@([^']*)'.*To append to your default list use \+(\S+)", text, re.S)
    if package:
        group, at, override = package.groups()
        option = override.partition("=")[2]
        return (
            f"{override}: the defaults list has no {group}@{at}: write {group}={option} to choose the {group}, "
            f"or +{override} to add {option} as one more {group} at {at or 'the top level'}"
        )
    no_group = re.search(r"Override (\S+) looks like a config group override, but config group '([^']+)' does not exist", text)
    if no_group:
        override, group = no_group.groups()
        groups = [*config_groups(), *_hydra_groups()]
        return f"{override}: no config group {group}{did_you_mean(group, groups)} (groups: {', '.join(config_groups())})"
    deleted = re.match(r"Could not delete '([^'=]+)(?:=([^']*))?'", text)
    if deleted:
        group, option = deleted.groups()
        if option is None:
            return f"~{group}: the defaults list has no {group} to delete"
        return f"~{group}={option}: the defaults list has no {group}={option} to delete; ~{group} deletes the {group}"
    sweep = re.match(r"Sweep parameters '([^'=]+)=([^']*)' requires --multirun", text)
    if sweep:
        key, value = sweep.groups()
        return (
            f"{key}={value}: a sweep runs one job per value: add -m (dlrun train -m {key}={value}); "
            f"for a text value, quote it: {_for_shell(f'{key}={_quoted(value)}')}"
        )
    match = re.search(r"Could not override '([^']+)'", text) or re.search(r"'([^']+)' does not exist", text)
    if match:
        key = match.group(1)
        if "/" in key:
            return f"{key}: no such config group{did_you_mean(key, _hydra_groups())}"
        if key in MOVED_KEYS:
            return f"{key}: moved; it is now {MOVED_KEYS[key]} ({MOVED_KEYS[key]}=...)"
        return f"{key}: no such key{did_you_mean(key, known_keys(overrides))}"
    ambiguous = re.match(r"Ambiguous value for argument '([^'=]+)=([^']*)'", text)
    if ambiguous:  # Hydra's advice spans three lines: keep it, in one
        key, value = ambiguous.groups()
        return (
            f"{key}={value}: a comma makes a sweep; write a list as {key}=[{value}], a text with commas "
            f"as {key}='{value}', or add -m to run one job per value"
        )
    return _file_error(err) or first_line(str(err.__cause__) if err.__cause__ else text)


def _hydra_groups() -> list[str]:
    """Hydra's own config groups (hydra/launcher, ...): the folders of Hydra's and dlrun's configs, and the
    launcher and sweeper groups that Hydra's plugins fill."""
    names = {"launcher", "sweeper"}
    for root in (files("hydra.conf") / "hydra", files(CONFIG_MODULE) / "hydra"):
        names.update(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("_"))
    return sorted(f"hydra/{name}" for name in names)


# ---- config files: a YAML file that does not parse, and where a `_target_` came from ----


def yaml_error(err: MarkedYAMLError) -> str | None:
    """`FILE, line L, column C: what is wrong; how to write it`, or None when YAML names no file."""
    context = err.context or ""
    # an unclosed bracket or quote is reported where the file ends, a line without ':' on the line after it:
    # where it began helps more
    began = any(word in context for word in ("flow", "quoted scalar", "simple key"))
    mark = (err.context_mark if began else err.problem_mark) or err.problem_mark or err.context_mark
    if mark is None or mark.name.startswith("<"):
        return None
    try:
        lines = Path(mark.name).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    where = f"{shown_path(mark.name)}, line {mark.line + 1}, column {mark.column + 1}"
    return f"{where}: {_yaml_problem(err, lines)}"


def _yaml_problem(err: MarkedYAMLError, lines: list[str]) -> str:
    problem, context, mark = err.problem or "", err.context or "", err.problem_mark
    line = lines[mark.line] if mark and mark.line < len(lines) else ""
    if "'\\t'" in problem:
        return "a tab: YAML indents with spaces only; replace the tab with spaces"
    if "cannot start any token" in problem:
        char, rest = line[mark.column : mark.column + 1], line[mark.column :].strip()
        key = re.match(r"\s*(?:-\s+)?([^:#]+):\s*$", line[: mark.column])
        example = f"{key.group(1).strip()}: '{rest}'" if key and "'" not in rest else "key: '...'"
        return f"'{char}' cannot start a value: quote the value ({example})"
    if "mapping values are not allowed" in problem:
        return (
            "mapping values are not allowed here: indent this key like the keys above it (deeper only under a key "
            "that ends with ':'), and quote a value that holds ': ' (key: 'a: b')"
        )
    if "simple key" in context:
        return "this line has no ':': write 'key: value' (or '- item' in a list)"
    if "expected <block end>" in problem:
        return "the indentation does not match the lines above: indent the keys of one mapping alike, with spaces"
    duplicate = re.match(r"found duplicate key (.+)", problem)
    if duplicate and mark:
        key, indent = duplicate.group(1), " " * mark.column
        since = err.context_mark.line if err.context_mark else 0
        first = next(
            (n + 1 for n in range(since, min(mark.line, len(lines))) if re.match(rf"{indent}{re.escape(key)}\s*:", lines[n])),
            None,
        )
        return f"{key} is set twice in one mapping{f' (first on line {first})' if first else ''}: keep one of them"
    if "flow sequence" in context:
        return "this '[' is not closed: write a list as [1, 2] on one line, or one '- item' per line"
    if "flow mapping" in context:
        return "this '{' is not closed: write a mapping as {a: 1, b: 2} on one line, or one 'key: value' per line"
    if "quoted scalar" in context:
        return "this quote is not closed: end the text with the quote it starts with"
    return f"{problem} ({context})" if context else problem


def _file_error(err: BaseException) -> str | None:
    """An error while Hydra reads a config file (an interpolation that does not parse, say), named by its file
    and line: Hydra's message names only the key, so the file is read from the frame that was loading it."""
    cause = err.__cause__
    if not isinstance(cause, OmegaConfBaseException):
        return None
    tb, path = cause.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "load_config" and "full_path" in tb.tb_frame.f_locals:
            path = tb.tb_frame.f_locals["full_path"]
        tb = tb.tb_next
    if path is None:
        return None
    key = str(getattr(cause, "full_key", "") or "")
    leaf = key.rsplit(".", 1)[-1]
    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    number = next((n for n, line in enumerate(lines, 1) if leaf and re.match(rf"\s*{re.escape(leaf)}\s*:", line)), None)
    where = f"{shown_path(path)}, line {number}" if number else shown_path(path)
    text = first_line(str(cause))
    if "${" in text or "interpolation" in type(cause).__name__.lower() or "GrammarParse" in type(cause).__name__:
        text += "; write an interpolation as ${other.key}, closed with '}', or a literal '${' as '\\${'"
    return f"{where}: {key}: {text}" if key else f"{where}: {text}"


def _target_source(err: ConfigError, overrides: list[str]) -> str:
    """`; set in FILE, line N` for a `_target_` that came from the user's config folder; '' when it was typed on
    the command line or is the shipped configs' own. Hydra keeps no file per key, so the files are searched."""
    if not (err.key.endswith("_target_") or err.key == "model") or not isinstance(err.value, str):
        return ""
    if any(override_key(o) in (err.key, f"{err.key}._target_") for o in overrides if "=" in o):
        return ""
    folders = _config_dirs(overrides)
    if not folders:
        return ""
    chosen = [f"{o.lstrip('+').split('=', 1)[0]}/{o.split('=', 1)[1]}.yaml" for o in overrides if _is_choice(o)]
    for folder in folders:
        found = _target_line(folder, err.value, chosen)
        if found:
            return f"; set in {shown_path(found[0])}, line {found[1]}"
    if _target_line(Path(str(files(CONFIG_MODULE))), err.value, []):
        return ""
    return f"; set in your --config-dir {shown_path(folders[0])}"


def _config_dirs(args: list[str]) -> list[Path]:
    """The folders a command line adds to the config search path: --config-dir (-cd), --config-path (-cp),
    and the file:// entries of hydra.searchpath."""
    folders = []
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if flag in ("--config-dir", "-cd", "--config-path", "-cp"):
            value = value if eq else (args[i + 1] if i + 1 < len(args) else "")
            if value:
                folders.append(Path(value).expanduser())
        elif override_key(arg) == "hydra.searchpath":
            folders += [Path(p) for p in re.findall(r"file://([^,\]'\"]+)", arg)]
    return [folder.resolve() for folder in folders if folder.is_dir()]


def _is_choice(override: str) -> bool:
    key, eq, value = override.lstrip("+").partition("=")
    return bool(eq) and bool(value) and "." not in key and "@" not in key and "," not in value


def _target_line(folder: Path, target: str, chosen: list[str]) -> tuple[Path, int] | None:
    """The first YAML file under `folder` (the chosen options' files first) with `_target_: TARGET`, and its line."""
    pattern = re.compile(rf"\s*(-\s+)?_target_\s*:\s*(['\"]?){re.escape(target)}\2\s*(#.*)?$")
    paths = sorted(folder.rglob("*.yaml"), key=lambda p: (p.relative_to(folder).as_posix() not in chosen, str(p)))
    for path in paths:
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for number, line in enumerate(lines, 1):
            if pattern.match(line):
                return path, number
    return None


# ---- the command line: overrides that Hydra's grammar cannot read, said with how to write them ----

OPENERS = {"[": "]", "{": "}", "(": ")"}
CLOSERS = {close: open_ for open_, close in OPENERS.items()}
# Characters an unquoted value may hold besides letters, digits and the brackets (Hydra's OverrideLexer.g4).
UNQUOTED = set("_-/\\+.$%*@?|: \t")
SEGMENT = r"(?:[A-Za-z_$][\w$-]*|0|[1-9][\d_]*)"
PACKAGE = rf"{SEGMENT}(?:\.{SEGMENT})*"
KEY = re.compile(rf"(?:[A-Za-z_][\w-]*(?:/[A-Za-z_][\w-]*)+|{PACKAGE})?(?:@(?:{PACKAGE})?)?")
GRAMMAR_DOCS = "https://hydra.cc/docs/advanced/override_grammar/basic/"


def _unparsable(err: OverrideParseException, overrides: list[str]) -> str:
    override = err.override or ""
    at = overrides.index(override) if override in overrides else 0
    problem = override_problem(override, overrides[at - 1] if at > 0 else None)
    if problem:
        return f"{override}: {problem}"
    lines = [line.strip() for line in str(err.message).splitlines() if line.strip()]
    detail = next((line for line in lines if not line.startswith(("Error parsing override", "See "))), "")
    return (
        f"cannot parse override '{override}'{': ' + detail if detail else ''}; quote a text value as a whole "
        f"({_for_shell('KEY=' + _quoted('...'))}), and see {GRAMMAR_DOCS}"
    )


def override_problem(override: str, before: str | None = None) -> str | None:
    """What is wrong with one `KEY=VALUE` as Hydra's grammar reads it, and how to write it; None when no
    fault is found (Hydra's own message is the best there is then). `before`: the argument before it, whose
    value the shell may have split at a space."""
    body = override.lstrip("+~")
    prefix = override[: len(override) - len(body)]
    if prefix not in ("", "+", "++", "~"):
        return "write +KEY=VALUE to add a key, ++KEY=VALUE to add or override it, ~KEY to delete it"
    key, eq, value = body.partition("=")
    if not eq and prefix == "~":
        if not key:
            return "names no key: write ~KEY to delete a key or a group, e.g. ~trainer.grad_clip"
        return None if KEY.fullmatch(key) else _bad_key(key)
    if not eq:
        split = before and "=" in before and not before.startswith("-")
        spaces = f"; if it is part of the value of {before}, quote the two as one: {_for_shell(f'{before} {override}')}"
        if re.match(r"[A-Za-z_]", body) and KEY.fullmatch(body):
            return f"no value: write {override}=VALUE{spaces if split else ''}"
        return f"not KEY=VALUE{spaces if split else ': write KEY=VALUE'}"
    if not key:
        return "no key before '=': write KEY=VALUE, e.g. optimizer.lr=0.01"
    if not KEY.fullmatch(key):
        return _bad_key(key)
    return _value_problem(prefix + key, value)


def _bad_key(key: str) -> str:
    return (
        f"'{key}' is not a key: write names joined by single dots (model.dropout), a config group as GROUP or "
        "GROUP/SUBGROUP (hydra/launcher), and a package after @ (model@encoder)"
    )


def _value_problem(key: str, value: str) -> str | None:
    flaw = _first_flaw(value)
    if flaw is None:
        return None
    kind, at, text = flaw
    shell_quoted = _for_shell(f"{key}={_quoted(value)}")
    if kind == "interpolation":
        example = _for_shell(key + "=${other.key}")
        return f"the interpolation '${{' is not closed: write {example} (single quotes keep the shell off it)"
    if kind == "stray":
        fixed = value[:at] + value[at + 1 :]
        return f"a '{text}' without its '{CLOSERS[text]}': write {key}={fixed}, or quote a text: {shell_quoted}"
    if kind == "equals" and at == 0:
        return f"one '=' goes between key and value: write {key}={value[1:]} (a text that starts with '=': {shell_quoted})"
    if kind == "equals":
        return f"quote values with = in them: {shell_quoted} (the outer quotes are for the shell)"
    if kind == "trailing":
        fixed = value[:at].rstrip()
        return f"a trailing comma: write {key}={fixed} (commas separate the values of a sweep, which runs with -m)"
    if kind == "comma":
        return f"an empty item between commas: write {key}={_drop_empty_items(value)}"
    if kind == "char":
        return f"{text!r} cannot stand in an unquoted value: quote the value, {shell_quoted}"
    if kind == "quote":
        inner = value.replace(text, "")
        return f"the {text} quote is not closed: write {_for_shell(f'{key}={text}{inner}{text}')}, or leave the quotes out"
    closed = value.rstrip(", ") + text
    what = {"[": "a list as", "{": "a dict as", "(": "a call as"}[value[at]]
    return f"the '{value[at]}' is not closed: write {what} {key}={closed}"


def _first_flaw(value: str) -> tuple[str, int, str] | None:
    """The first thing in an override's value that Hydra's grammar rejects: (kind, index, text), where text is
    the character at fault, or for an unclosed bracket the brackets that would close it."""
    stack, quote, start, i = [], "", 0, 0
    while i < len(value):
        char = value[i]
        if quote or char == "\\":
            if char == "\\":
                i += 1  # an escaped character, in quotes or out (\, \= \[ ...)
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote, start = char, i
        elif value.startswith("${", i):
            end = value.find("}", i)
            if end < 0:
                return "interpolation", i, "${"
            i = end
        elif char in OPENERS:
            stack.append(i)
        elif char in CLOSERS:
            if not stack or value[stack[-1]] != CLOSERS[char]:
                return "stray", i, char
            stack.pop()
        elif char == "=" and not (stack and value[stack[-1]] == "("):  # name=value is allowed in a call only
            return "equals", i, char
        elif char == "," and _empty_item(value, i) and not (stack and not value[i + 1 :].strip()):
            return ("trailing" if not stack and not value[i + 1 :].strip() else "comma"), i, char
        elif not (char.isascii() and (char.isalnum() or char in UNQUOTED or char == ",")):
            return "char", i, char
        i += 1
    if quote:
        return "quote", start, quote
    if stack:
        return "open", stack[0], "".join(OPENERS[value[j]] for j in reversed(stack))
    return None


def _empty_item(value: str, comma: int) -> bool:
    before, after = value[:comma].rstrip(), value[comma + 1 :].lstrip()
    return not before or before[-1] in ",[{(" or not after or after[0] in ",]})"


def _drop_empty_items(value: str) -> str:
    value = re.sub(r",(\s*,)+", ",", value)
    value = re.sub(r"([\[{(])\s*,", r"\1", value)
    return re.sub(r",\s*([\]})])", r"\1", value).strip(", ")


def _empty_key(overrides: list[str]) -> str | None:
    """The first override with no key (`=1`, `~`), which Hydra reports only as an error deep in composition."""
    for override in overrides:
        if override.startswith("-"):
            continue
        body = override.lstrip("+~")
        if body.startswith("=") or (override.startswith("~") and not body):
            return f"{override}: {override_problem(override)}"
    return None


def _quoted(value: str) -> str:
    """`value` as one quoted Hydra string."""
    if "'" not in value:
        return f"'{value}'"
    return '"' + value.replace('"', '\\"') + '"'


def _for_shell(text: str) -> str:
    """`text` as typed in a shell: wrapped in the quotes it does not hold already, so that they reach Hydra."""
    return f'"{text}"' if "'" in text else f"'{text}'"
