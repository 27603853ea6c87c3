"""Checkpoints: written atomically, loaded with weights_only=True so that loading never runs code.

last.pt also holds what `dlrun train resume=PATH` needs to continue as if never stopped: the step,
the scheduler, early stopping, the history and every random generator's state."""

import io
import random
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from dlrun.core import ranks
from dlrun.core.errors import ConfigError, DlrunError
from dlrun.core.io import atomic_write, read_json

FORMAT = "dlrun-checkpoint-1"


def save(path: Path, model, optimizer, epoch: int, cfg, data, **extra) -> None:
    if not ranks.is_main():  # in a multi-process run, rank 0 alone writes (all ranks hold the same weights)
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
    atomic_write(path, lambda f: f.write(buf.getbuffer()))


def load(path: Path, map_location="cpu") -> dict:
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise DlrunError(f"{path}: no such checkpoint") from None
    except Exception as err:
        raise DlrunError(
            f"{path}: not a dlrun checkpoint, or it holds objects that could run code; refused to load it ({type(err).__name__})"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DlrunError(f"{path}: not a dlrun checkpoint (no '{FORMAT}' format tag)")
    return state


def rng_state(*generators: torch.Generator) -> dict:
    """Every random stream a run draws from, in types that weights_only loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
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
        raise ConfigError(
            "resume",
            cfg.resume,
            f"continues a run in its own directory, not in {run_dir}; use `dlrun train resume=PATH`, which chooses the directory",
        )
    state = load(Path(run_dir) / "last.pt")
    if "step" not in state:
        raise DlrunError(f"{run_dir / 'last.pt'}: written by an older dlrun without the state to resume from")
    return state


def already_completed(state: dict, run_dir: Path, epochs: int) -> bool:
    """True when the run finished (tested and all) and `epochs` asks for no more training."""
    status = read_json(Path(run_dir) / "metrics.json").get("status")
    return status == "completed" and (state["epoch"] >= epochs or bool(state.get("stopped")))


def restore(state: dict, model, optimizer, schedule, stopper, generators, streams: bool = True) -> None:
    """Put a run back where last.pt left it. `streams=False` (several ranks, each with its own random
    streams) restores the data order only."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise DlrunError(
            f"last.pt does not fit the model and optimizer of this config: {str(err).strip().splitlines()[0]}"
        ) from err
    schedule.load_state_dict(state["scheduler"])
    stopper.load_state_dict(state["early_stopping"])
    if streams:
        restore_rng(state["rng"], *generators)
    else:
        generators[0].set_state(state["rng"]["generators"][0])
