"""Loading a checkpoint or a run directory never runs code: a pickle that would run code is refused
unexecuted, and `dlrun eval` only builds models from allowed packages unless told --trust-config."""

import csv
import json
import pickle
import shutil
import sys

import pytest
import torch
from helpers import run_dlrun

from dlrun.app.eval_cmd import allowed, evaluate_checkpoint
from dlrun.core.errors import DlrunError
from dlrun.engine import checkpoint


class RunsCode:
    """Unpickling this creates `marker`: the stand-in for any code an attacker would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_whose_pickle_runs_code_is_refused_unexecuted(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "tampered.pt"
    torch.save({"format": checkpoint.FORMAT, "epoch": 1, "model": RunsCode(marker)}, path)

    with pytest.raises(DlrunError, match="refused to load it"):
        checkpoint.load(path)
    assert not marker.exists(), "loading the checkpoint ran its code"

    # The file really is dangerous: an unsafe load runs the code.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_a_plain_pickle_that_runs_code_is_refused_unexecuted(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "plain.pt"
    path.write_bytes(pickle.dumps(RunsCode(marker), protocol=2))
    with pytest.raises(DlrunError, match="refused to load it"):
        checkpoint.load(path)
    assert not marker.exists()


def test_files_that_are_not_dlrun_checkpoints(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(DlrunError, match="not a dlrun checkpoint"):
        checkpoint.load(foreign)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(DlrunError, match="refused to load it"):
        checkpoint.load(text)
    with pytest.raises(DlrunError, match="no such checkpoint"):
        checkpoint.load(tmp_path / "missing.pt")


@pytest.mark.parametrize(
    "target, ok",
    [
        ("dlrun.model.MLP", True),
        ("torchvision.models.resnet18", True),
        ("torch.nn.Linear", True),
        ("torchmetrics.MeanMetric", True),
        ("torchx.Net", False),
        ("os.system", False),
        ("builtins.exec", False),
        ("torch.hub.load", False),
        ("torch.load", False),
        ("torch.utils.cpp_extension.load_inline", False),
        ("torch._C._nn", False),
    ],
)
def test_the_allow_list(target, ok):
    assert allowed(target) is ok


# ---- `dlrun eval` on a real run ----


@pytest.fixture(scope="module")
def run_dir(reference_run):
    return reference_run


def read_csv(path):
    with open(path) as f:
        return list(csv.reader(f))


@pytest.mark.slow
def test_eval_reproduces_the_runs_test_metrics(run_dir):
    proc = run_dlrun("eval", str(run_dir), cwd=run_dir.parent)
    out = run_dir / "eval" / "digits-test-best"
    assert f"eval saved in {out}" in proc.stdout
    result = json.loads((out / "metrics.json").read_text())
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert result["test"] == pytest.approx(trained["test"], abs=1e-6)
    assert result["epoch"] == trained["best"]["epoch"]
    report = read_csv(out / "classification_report.csv")
    assert report[0] == ["class", "precision", "recall", "f1", "support"]
    assert [row[0] for row in report[1:11]] == [str(i) for i in range(10)]
    assert float(report[11][3]) == pytest.approx(trained["test"]["f1"], abs=1e-4)  # macro avg f1
    confusion = read_csv(out / "confusion_matrix.csv")
    counts = [[int(v) for v in row[1:]] for row in confusion[1:]]
    assert sum(map(sum, counts)) == result["samples"] == 359
    assert sum(counts[i][i] for i in range(10)) / 359 == pytest.approx(trained["test"]["accuracy"], abs=1e-6)
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_eval_on_the_val_split_matches_the_best_epochs_val_metrics(run_dir):
    result = evaluate_checkpoint(run_dir / "best.pt", split="val", device="cpu")
    trained = json.loads((run_dir / "metrics.json").read_text())
    for metric in ("loss", "accuracy", "f1"):
        assert result["val"][metric] == pytest.approx(trained["best"][f"val/{metric}"], abs=1e-5)
    assert (run_dir / "eval" / "digits-val-best" / "metrics.json").is_file()


@pytest.mark.slow
def test_eval_of_a_tampered_run_is_one_line_and_runs_nothing(run_dir, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(run_dir, tampered, ignore=shutil.ignore_patterns("eval"))
    marker = tmp_path / "code-ran"
    torch.save({"format": checkpoint.FORMAT, "model": RunsCode(marker)}, tampered / "best.pt")
    proc = run_dlrun("eval", str(tampered), cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"dlrun: error: {tampered / 'best.pt'}: not a dlrun checkpoint, or it holds objects that could run code; "
        "refused to load it (UnpicklingError)"
    ]
    assert not marker.exists()


def with_model_target(run_dir, dest, target: str):
    """A copy of the run whose saved config names another model class."""
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("eval"))
    state = checkpoint.load(dest / "best.pt")
    state["config"] = state["config"].replace("_target_: dlrun.model.MLP", f"_target_: {target}")
    torch.save(state, dest / "best.pt")
    return dest


@pytest.mark.slow
def test_eval_refuses_a_config_outside_the_allow_list_until_trusted(run_dir, tmp_path, monkeypatch):
    # A package that leaves a mark when imported: refusing must happen before any import.
    package = tmp_path / "pkgs" / "sharedmodels"
    package.mkdir(parents=True)
    marker = tmp_path / "imported"
    (package / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom dlrun.model import MLP\n\n\nclass Net(MLP):\n    pass\n"
    )
    copy = with_model_target(run_dir, tmp_path / "shared-run", "sharedmodels.Net")
    env = {"PYTHONPATH": str(tmp_path / "pkgs")}

    proc = run_dlrun("eval", str(copy), cwd=tmp_path, env=env, check=False)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(
        "dlrun: error: model._target_=sharedmodels.Net: not in the allow-list (dlrun., torch., torchvision., torchmetrics.)"
    )
    assert "--trust-config" in line
    assert not marker.exists(), "the untrusted package was imported"
    assert not (copy / "eval").exists()

    # Trusted, the same run evaluates to the original's numbers (in-process: the package is on sys.path).
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    result = evaluate_checkpoint(copy, device="cpu", trust=True)
    assert marker.exists()
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert result["test"] == pytest.approx(trained["test"], abs=1e-6)
    sys.modules.pop("sharedmodels", None)


@pytest.mark.slow
def test_eval_of_a_run_saved_before_the_packages_moved(run_dir, tmp_path):
    # Runs saved by dlrun 0.1 name their model `dlrun.models.MLP`: they still evaluate, to the same numbers.
    old = with_model_target(run_dir, tmp_path / "old-run", "dlrun.models.MLP")
    assert "_target_: dlrun.models.MLP" in checkpoint.load(old / "best.pt")["config"]
    result = evaluate_checkpoint(old, device="cpu")
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert result["test"] == pytest.approx(trained["test"], abs=1e-6)


@pytest.mark.slow
def test_eval_refuses_a_function_that_is_not_a_module_class_even_in_torch(run_dir, tmp_path):
    copy = with_model_target(run_dir, tmp_path / "run", "torch.save")
    with pytest.raises(DlrunError, match="must be a torch.nn.Module class"):
        evaluate_checkpoint(copy, device="cpu")


@pytest.mark.slow
def test_eval_on_an_incompatible_dataset(run_dir, tmp_path):
    # The spiral's 2-D points do not fit a model trained on 8x8 digit images.
    with pytest.raises(DlrunError, match=r"dataset=.*is not compatible"):
        evaluate_checkpoint(run_dir, dataset="spiral", device="cpu")
