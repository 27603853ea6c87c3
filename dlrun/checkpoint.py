"""Checkpoints: written atomically, loaded with weights_only=True so that loading never runs code.

last.pt also holds what `dlrun train resume=PATH` needs to continue as if never stopped: the step,
the scheduler, early stopping, the history and every random generator's state."""

import io
import json
import random
from pathlib import Path

import numpy as np
import torch
import yaml
from omegaconf import OmegaConf

from dlrun import distributed, report
from dlrun.errors import ConfigError, DlrunError

FORMAT = "dlrun-checkpoint-1"


def save(path: Path, model, optimizer, epoch: int, cfg, data, **extra) -> None:
    if not distributed.is_main():  # in a multi-process run, rank 0 alone writes (all ranks hold the same weights)
        return
    state = {
        "format": FORMAT,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": OmegaConf.to_yaml(cfg),
        "classes": list(data.classes),
        "in_shape": list(data.in_shape),
        "mean": list(data.mean),
        "std": list(data.std),
        **extra,
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    report.atomic_write(path, lambda f: f.write(buf.getbuffer()))


def load(path: Path, map_location="cpu") -> dict:
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise DlrunError(f"{path}: no such checkpoint")
    except Exception as err:
        raise DlrunError(
            f"{path}: not a dlrun checkpoint, or it holds objects that could run code; refused to load it "
            f"({type(err).__name__})"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DlrunError(f"{path}: not a dlrun checkpoint (no '{FORMAT}' format tag)")
    return state


def rng_state(*generators: torch.Generator) -> dict:
    """Every random stream a run draws from, in types that weights_only loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "cached": cached},
        "torch": torch.get_rng_state(),
        "generators": [g.get_state() for g in generators],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, *generators: torch.Generator) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for generator, saved in zip(generators, state["generators"]):
        generator.set_state(saved)


# ---- `dlrun train resume=PATH|latest`: which run, and the command line that continues it ----

def find_run(spec: str, cwd: Path) -> Path:
    """The run directory that `resume=SPEC` names: a run directory, its last.pt, or `latest`."""
    if spec == "latest":
        found = sorted((cwd / "outputs").glob("**/last.pt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise ConfigError("resume", spec, f"no run with a last.pt under {cwd / 'outputs'}; pass its directory")
        return found[-1].parent.resolve()
    path = Path(spec).expanduser()
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise ConfigError("resume", spec, "must be a run directory, its last.pt, or latest")
    if not (path / "last.pt").is_file():
        raise ConfigError("resume", spec, "has no last.pt to continue from: the run stopped before its first "
                          "checkpoint, so start it again")
    return path.resolve()


def resume_args(args: list[str], cwd: Path) -> list[str]:
    """`dlrun train resume=X [KEY=VALUE...]` -> the run's own overrides, then the new ones, into its directory."""
    spec = next(a.split("=", 1)[1] for a in args if a.startswith("resume="))
    run_dir = find_run(spec, cwd)
    # last.pt's copy of the overrides: written atomically, unlike Hydra's .hydra/overrides.yaml
    saved = load(run_dir / "last.pt").get("overrides")
    if saved is None:
        saved_file = run_dir / ".hydra" / "overrides.yaml"
        saved = yaml.safe_load(saved_file.read_text()) if saved_file.is_file() else []
    merged = {}
    for override in [*(saved or []), *(a for a in args if not a.startswith("resume="))]:
        key = override.split("=", 1)[0].lstrip("+~")
        if key not in ("resume", "hydra.run.dir"):
            merged[key] = override
    quoted = "'" + str(run_dir).replace("\\", "\\\\").replace("'", "\\'") + "'"
    return [*merged.values(), f"resume={quoted}", f"hydra.run.dir={quoted}"]


# ---- what last.pt adds so that a resumed run goes on exactly as an uninterrupted one ----

def training_state(step: int, history: list[dict], best: dict, schedule, stopper, generators, wall_time_s: float) -> dict:
    return {
        "step": step,
        "history": [dict(row) for row in history],
        "best": dict(best),
        "scheduler": schedule.state_dict(),
        "early_stopping": stopper.state_dict(),
        "rng": rng_state(*generators),
        "wall_time_s": wall_time_s,
    }


def load_for_resume(cfg, run_dir: Path) -> dict | None:
    """last.pt of the run that `resume=` names, which must be this run's directory; None for a fresh run."""
    if not cfg.get("resume"):
        return None
    if Path(cfg.resume).resolve() != Path(run_dir).resolve():
        raise ConfigError("resume", cfg.resume, f"continues a run in its own directory, not in {run_dir}; "
                          "use `dlrun train resume=PATH`, which chooses the directory")
    state = load(Path(run_dir) / "last.pt")
    if "step" not in state:
        raise DlrunError(f"{run_dir / 'last.pt'}: written by an older dlrun without the state to resume from")
    return state


def already_completed(state: dict, run_dir: Path, epochs: int) -> bool:
    """True when the run finished (tested and all) and `epochs` asks for no more training."""
    try:
        status = json.loads((Path(run_dir) / "metrics.json").read_text()).get("status")
    except (OSError, ValueError):
        status = None
    return status == "completed" and (state["epoch"] >= epochs or bool(state.get("stopped")))


def restore(state: dict, model, optimizer, schedule, stopper, generators, streams: bool = True) -> None:
    """Put a run back where last.pt left it. `streams=False` (several ranks, each with its own random
    streams) restores the data order only."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise DlrunError(f"last.pt does not fit the model and optimizer of this config: "
                         f"{str(err).strip().splitlines()[0]}") from err
    schedule.load_state_dict(state["scheduler"])
    stopper.load_state_dict(state["early_stopping"])
    if streams:
        restore_rng(state["rng"], *generators)
    else:
        generators[0].set_state(state["rng"]["generators"][0])
