"""`dlrun lr-find`: the learning-rate range test on a train config. The lr schedule, the smoothing and the early
stop are read back from lr_find.csv; the rules are checked on curves worked out by hand and against fastai's own
valley loop; the printed `dlrun train` command is run and must train."""

import copy
import csv
import inspect
import json
import math
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import compose_config, needs_cuda, run_dlrun
from matplotlib.image import imread
from omegaconf import OmegaConf

import dlrun
from dlrun.app.cli import main
from dlrun.config.check import check_config
from dlrun.config.compose import compose_config as compose
from dlrun.core.errors import DlrunError
from dlrun.engine.lr_find import lr_range_test, lr_schedule, suggest
from dlrun.engine.precision import native_bf16
from dlrun.engine.run import build_parts

CONFIGS = Path(dlrun.__file__).parent / "configs"
QUICK = ["device=cpu", "trainer.precision=32"]


def read_curve(run_dir: Path) -> list[dict]:
    with open(run_dir / "lr_find.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def expected_lrs(start: float, end: float, n: int) -> list[float]:
    return [start * (end / start) ** (i / (n - 1)) for i in range(n)]


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---- the rules, on curves worked out by hand ----

# 21 steps: the rules read steps 2..15 (fastai skips the first tenth and the last five).
CURVE = [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 1.9, 1.7, 1.35, 1.0, 0.7, 0.5, 0.45, 0.6, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
LRS = list(10 ** np.linspace(-5, 1, 21))


def test_steepest_is_where_the_loss_falls_fastest_against_log_lr():
    # Central differences (the log-lr spacing is even): around step 8 (1.35) the loss falls from 1.7 to 1.0,
    # by 0.7, more than the 0.65 around step 9 and the 0.55 around step 7.
    found = suggest(LRS, CURVE, "steepest")
    assert (found.index, found.lr, found.rule) == (8, LRS[8], "steepest")


def test_valley_is_a_third_and_a_sixth_into_the_longest_descent():
    # In steps 2..15 the longest run of ever lower losses is 2.0, 1.9, ..., 0.45: 8 points ending at step 12,
    # so it starts at 12 - 8 = 4 (fastai's count), and 4 + int(8/3) + int(8/6) = 7.
    found = suggest(LRS, CURVE, "valley")
    assert (found.index, found.lr) == (7, LRS[7])


def fastai_valley(lrs, losses) -> int:
    """fastai's valley loop as it is written in fastai.callback.schedule, on the trimmed curve."""
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if (losses[i] < losses[j]) and (lds[i] < lds[j] + 1):
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2)


def test_valley_agrees_with_fastais_loop_on_random_curves():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(20, 80))
        losses = list(np.cumsum(rng.normal(0, 1, n)) + 2 * np.sin(np.linspace(0, 4, n)))
        lrs = list(10 ** np.linspace(-6, 1, n))
        lo, hi = n // 10, n - 5
        assert suggest(lrs, losses, "valley").index == lo + fastai_valley(lrs[lo:hi], losses[lo:hi])


def test_a_curve_too_short_to_trim_is_read_whole():
    assert suggest([1e-3, 1e-2, 1e-1, 1.0], [3.0, 2.0, 0.5, 0.4], "steepest").index == 1


# ---- the test itself, in-process on digits ----


def test_the_lr_follows_the_exponential_schedule_cycling_through_the_epochs(here):
    # 30 steps of batches of 64: more than the 21 batches of one epoch of digits' training split.
    found = dlrun.lr_find([*QUICK, "lr_find.start_lr=1e-4", "lr_find.end_lr=0.1", "lr_find.num_steps=30", "lr_find.diverge=null"])
    rows = read_curve(found["run_dir"])
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    for row, lr in zip(rows, expected_lrs(1e-4, 0.1, 30)):
        assert row["lr"] == pytest.approx(lr, rel=1e-9)
    losses = np.array([r["loss"] for r in rows])
    # the debiased moving average, written as the weighted mean it is: weights beta ** (t - i) for i <= t
    smoothed = [np.average(losses[: t + 1], weights=0.98 ** np.arange(t, -1, -1)) for t in range(30)]
    assert [r["smoothed_loss"] for r in rows] == pytest.approx(smoothed, rel=1e-9)
    assert found["steps_run"] == 30 and not found["stopped_early"]
    assert 1e-4 <= found["suggestion"] <= 0.1
    assert found["rule"] == "valley" and found["suggestion"] == found["suggestions"]["valley"]["lr"]
    written = {p.name for p in found["run_dir"].iterdir()}
    assert {"lr_find.csv", "lr_find.png", "lr_find.json"} <= written
    assert not written & {"metrics.json", "best.pt", "last.pt", "history.csv"}, "not a training run"
    assert [p.name for p in (here / "outputs").iterdir()] == ["lr_find"], "no run dir of any other kind"


def test_a_blow_up_stops_the_test_early_and_says_so(here, capsys):
    found = dlrun.lr_find([*QUICK, "lr_find.start_lr=1e-3", "lr_find.end_lr=1e6", "lr_find.num_steps=100"])
    out = capsys.readouterr().out
    rows = read_curve(found["run_dir"])
    smoothed = [r["smoothed_loss"] for r in rows]
    assert found["stopped_early"] and found["steps_run"] == len(rows) < 100
    assert f"stopped early after {len(rows)} of 100 steps" in out
    assert smoothed[-1] > 4 * min(smoothed), "the last step is the one past 4 x the minimum"
    assert all(s <= 4 * min(smoothed[: i + 1]) for i, s in enumerate(smoothed[:-1])), "and no step before it"
    assert 1e-3 <= found["suggestion"] <= rows[-1]["lr"]


OPTIMIZERS = sorted(p.stem for p in (CONFIGS / "optimizer").glob("*.yaml"))


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_takes_the_lr_on_every_param_group(optimizer):
    cfg = compose_config(f"optimizer={optimizer}", *QUICK)
    parts = build_parts(cfg, torch.device("cpu"))
    model, built = parts.built.model, parts.built.optimizer
    # two param groups, the second with an lr of its own (adadelta's 1.0 is its config's): both are driven
    weights, others = [p for p in model.parameters() if p.dim() > 1], [p for p in model.parameters() if p.dim() <= 1]
    accepted = inspect.signature(type(built)).parameters
    settings = {k: v for k, v in built.defaults.items() if k in accepted}
    opt = type(built)([{"params": weights}, {"params": others, "lr": 123.0}], **settings)
    before = [p.detach().clone() for p in weights]
    lrs = lr_schedule(1e-6, 1.0, 6)
    loader, loss_fn = parts.loaders[0], parts.built.train_loss
    test = lr_range_test(model, loader, loss_fn, opt, parts.amp, cfg.trainer, parts.train_metrics, lrs, diverge=None)
    assert test.lrs == pytest.approx(expected_lrs(1e-6, 1.0, 6), rel=1e-12) and not test.stopped_early
    assert [group["lr"] for group in opt.param_groups] == [lrs[-1], lrs[-1]]
    assert all(math.isfinite(loss) for loss in test.losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, weights)), "the steps moved the weights"


def test_a_cnn_in_the_precision_training_would_pick(here, capsys):
    found = dlrun.lr_find(["device=cpu", "model=cnn", "lr_find.num_steps=8", "lr_find.end_lr=1"])
    rows = read_curve(found["run_dir"])
    assert len(rows) == found["steps_run"] == 8 and all(math.isfinite(r["loss"]) for r in rows)
    assert 1e-7 <= found["suggestion"] <= 1
    # trainer.precision=auto: bf16 autocast for a conv net where the CPU runs bf16 natively, as in training
    expected = "bf16" if native_bf16(torch.device("cpu")) else "fp32"
    assert f"CNN on digits (1294 train, 21 batches of 64 per epoch) on cpu, {expected};" in capsys.readouterr().out


@needs_cuda
def test_on_cuda_in_the_precision_training_picks(here):
    found = dlrun.lr_find(["device=cuda", "model=cnn", "lr_find.num_steps=20", "lr_find.end_lr=1"])
    rows = read_curve(found["run_dir"])
    assert [r["lr"] for r in rows] == pytest.approx(expected_lrs(1e-7, 1.0, len(rows)), rel=1e-9)
    assert all(math.isfinite(r["loss"]) for r in rows) and torch.cuda.is_available()


@pytest.fixture(scope="module")
def lr_find_config():
    return compose("lr_find")


@pytest.mark.parametrize(
    "overrides, line",
    [
        (["lr_find.start_lr=0"], "lr_find.start_lr=0: must be a number > 0"),
        (["lr_find.end_lr=1.0e-8"], "lr_find.start_lr=1e-07: must be below lr_find.end_lr (1e-08)"),
        (["lr_find.num_steps=1"], "lr_find.num_steps=1: must be an integer >= 2 (optimizer steps of the test)"),
        (["lr_find.num_steps=2.5"], "lr_find.num_steps=2.5: must be an integer >= 2"),
        (["lr_find.rule=foo"], "lr_find.rule=foo: must be one of valley, steepest"),
        (["lr_find.rule=valey"], "lr_find.rule=valey: must be one of valley, steepest; did you mean 'valley'?"),
        (["lr_find.smoothing=1"], "lr_find.smoothing=1: must be a number in [0, 1) (0: no smoothing)"),
        (["lr_find.diverge=1"], "lr_find.diverge=1: must be a number > 1 or null (null: never stop early)"),
        (["lr_find=3"], "lr_find=3: must be a block of keys; set one of them, e.g. lr_find.end_lr=1"),
    ],
)
def test_bad_values_are_one_line_naming_the_key(lr_find_config, overrides, line):
    cfg = copy.deepcopy(lr_find_config)
    for override in overrides:
        key, value = override.split("=")
        OmegaConf.update(cfg, key, yaml.safe_load(value), force_add=True, merge=False)
    with pytest.raises(DlrunError) as err:
        check_config(cfg)
    assert str(err.value).startswith(line) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "overrides, line",
    [
        (["lr_find.start_lr=1", "lr_find.end_lr=0.1"], "lr_find.start_lr=1: must be below lr_find.end_lr (0.1)"),
        (["-m", "optimizer.lr=0.1,0.2"], "dlrun lr-find runs one range test; drop -m"),
        (["lr_find.strat_lr=1e-5"], "lr_find.strat_lr: no such key; did you mean 'lr_find.start_lr'"),
    ],
)
def test_bad_values_stop_the_command_and_leave_no_folder(here, overrides, line):
    with pytest.raises(DlrunError) as err:
        dlrun.lr_find(overrides)
    assert str(err.value).startswith(line) and "\n" not in str(err.value)
    assert not (here / "outputs" / "lr_find").exists() or not list((here / "outputs" / "lr_find").iterdir())


def test_help_names_the_command_and_its_keys(here, capsys):
    main(["--help"])
    assert "  lr-find   the learning-rate range test" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:  # Hydra's help exits 0, as `dlrun train --help` does
        main(["lr-find", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert out.startswith("dlrun lr-find: the learning-rate range test.")
    defaults = ["start_lr: 1.0e-07", "end_lr: 10.0", "num_steps: 100", "diverge: 4.0", "smoothing: 0.98", "rule: valley"]
    assert "lr_find:\n" + "".join(f"  {line}\n" for line in defaults) in out
    assert not (here / "outputs").exists(), "help runs nothing"


def test_a_training_runs_folder_is_refused_before_hydra_writes_into_it(here):
    run_dir = here / "a_run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text("{}")
    with pytest.raises(DlrunError, match="holds a training run"):
        dlrun.lr_find([f"hydra.run.dir={run_dir}"])
    assert [p.name for p in run_dir.iterdir()] == ["metrics.json"]


# ---- through the installed command ----


@pytest.mark.slow
def test_the_command_prints_a_suggestion_whose_train_command_trains(tmp_path, monkeypatch):
    args = ["lr-find", "model.hidden_sizes=[64]", "lr_find.num_steps=60", *QUICK]
    proc = run_dlrun(*args, cwd=tmp_path)
    lines = proc.stdout.strip().splitlines()
    run_dir = Path(lines[-1].split(": ", 1)[1]).parent
    assert lines[-1] == f"open the curve: {run_dir / 'lr_find.png'}"
    summary = json.loads((run_dir / "lr_find.json").read_text())
    shown = f"{summary['suggestion']:.3g}"
    assert f"suggested lr: {shown} (lr_find.rule=valley; steepest: " in proc.stdout
    assert 1e-7 <= float(shown) <= 10
    assert imread(run_dir / "lr_find.png").shape[2] in (3, 4) and len(read_curve(run_dir)) == summary["steps_run"]
    command = next(line.split(": ", 1)[1] for line in lines if line.startswith("train with it: "))
    assert command == f"dlrun train model.hidden_sizes='[64]' device=cpu trainer.precision=32 optimizer.lr={shown}"
    words = shlex.split(command)  # as a shell reads the line
    monkeypatch.chdir(tmp_path)
    quiet = ["logging.graph=false", "logging.misclassified=0", "logging.confusion_matrix_every=0", "logging.hparams=false"]
    run = dlrun.train([*words[2:], "trainer.epochs=2", *quiet])
    losses = [row["train/loss"] for row in run.history]
    assert run.status == "completed" and losses[-1] < losses[0], losses
    assert yaml.safe_load((run.run_dir / ".hydra" / "config.yaml").read_text())["optimizer"]["lr"] == float(shown)


def test_a_bad_value_exits_2_with_one_line_and_leaves_no_folder(here, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["lr-find", "lr_find.num_steps=1"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "dlrun: error: lr_find.num_steps=1: must be an integer >= 2 (optimizer steps of the test)"
    ]
    assert not (here / "outputs" / "lr_find").exists() or not list((here / "outputs" / "lr_find").iterdir())
