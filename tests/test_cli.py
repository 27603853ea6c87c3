"""The `dlrun` command line as a user meets it: help, composed configs, one-line errors, completion."""

import os
import shutil
import subprocess
import sys

import pytest
from helpers import DLRUN, run_dlrun, without_cuda

from dlrun.app.cli import SUBCOMMANDS
from dlrun.config.groups import config_groups

pytestmark = pytest.mark.slow

GROUPS = config_groups()


def assert_one_line_error(proc, *expected: str, code: int = 2):
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def test_help_lists_commands_groups_and_options(workdir):
    out = run_dlrun("--help", cwd=workdir).stdout
    for command in SUBCOMMANDS:
        assert f"  {command} " in out, f"subcommand {command} not in help"
    for group, options in GROUPS.items():
        group_line = next((line for line in out.splitlines() if line.strip().startswith(group)), None)
        assert group_line is not None, f"group {group} not in help"
        for option in options:
            assert option in group_line, f"{group}={option} not in help line {group_line!r}"


def test_python_m_dlrun_is_the_same_command(workdir):
    proc = subprocess.run([sys.executable, "-m", "dlrun", "--help"], cwd=workdir, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == run_dlrun("--help", cwd=workdir).stdout


def test_help_does_not_import_torch(workdir):
    code = (
        "import sys\n"
        "from dlrun.app.cli import main\n"
        "main(['--help'])\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'tensorboard', 'matplotlib') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Commands:" in proc.stdout


def test_train_help_shows_groups_and_main_keys(workdir):
    out = run_dlrun("train", "--help", cwd=workdir).stdout
    for group, options in GROUPS.items():
        if options:
            assert f"{group}: {', '.join(options)}" in out
    for key in ("trainer:", "epochs:", "batch_size:", "val_fraction:", "monitor:", "seed:", "lr:"):
        assert key in out


def test_cfg_job_prints_the_composed_config(workdir):
    proc = run_dlrun("train", "--cfg", "job", "model=cnn", "trainer.epochs=3", cwd=workdir)
    assert "_target_: dlrun.model.CNN" in proc.stdout
    assert "epochs: 3" in proc.stdout
    assert not (workdir / "outputs").exists(), "--cfg job must not start a run"


def test_config_dir_adds_a_users_own_option(workdir):
    own = workdir / "my_configs" / "model"
    own.mkdir(parents=True)
    (own / "tiny.yaml").write_text("_target_: dlrun.model.MLP\nhidden_sizes: [7]\n")
    out = run_dlrun("train", "--config-dir", str(workdir / "my_configs"), "model=tiny", "--cfg", "job", cwd=workdir).stdout
    assert "hidden_sizes:\n  - 7" in out
    assert "optimizer:" in out, "the shipped groups still compose beside the user's"


def test_unknown_subcommand_suggests_train(workdir):
    assert_one_line_error(run_dlrun("trian", cwd=workdir, check=False), "'train'")


def test_unknown_group_option_suggests_the_closest(workdir):
    line = assert_one_line_error(run_dlrun("train", "model=mpl", cwd=workdir, check=False), "mpl", "'mlp'")
    assert "cnn" in line  # and lists what exists


def test_unknown_key_suggests_the_closest(workdir):
    assert_one_line_error(run_dlrun("train", "trainer.epoch=3", cwd=workdir, check=False), "trainer.epochs")


@without_cuda
def test_cuda_on_a_machine_without_it_names_the_available_devices(workdir):
    proc = run_dlrun("train", "model=cnn", "device=cuda", "trainer.epochs=1", cwd=workdir, check=False)
    assert_one_line_error(proc, "cuda", "available", "cpu", code=1)


def complete(line: str, workdir) -> list[str]:
    # What the script from `-sc install=bash` runs on <TAB>: the bare command with the line in COMP_LINE.
    env = {"COMP_LINE": line, "COMP_POINT": str(len(line))}
    return run_dlrun("-sc", "query=bash", cwd=workdir, env=env).stdout.split()


def test_completion_offers_subcommands(workdir):
    assert "train" in complete("dlrun tr", workdir)


def test_completion_goes_through_the_subcommand(workdir):
    assert "model=" in complete("dlrun train mod", workdir)
    options = complete("dlrun train model=", workdir)
    assert {f"model={o}" for o in GROUPS["model"]} <= set(options)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_completion_install_script_completes_in_bash(workdir):
    script = run_dlrun("train", "-sc", "install=bash", cwd=workdir).stdout
    assert "complete" in script
    # Source the script in a real bash and press <TAB> by calling its completion function.
    driver = (
        f"{script}\n"
        'for line in "dlrun tr" "dlrun train model=c"; do\n'
        '  COMP_LINE="$line"; COMP_POINT=${#line}; read -ra words <<< "$line"; COMP_CWORD=$(( ${#words[@]} - 1 ))\n'
        '  hydra_bash_completion; echo "${COMPREPLY[*]}"\n'
        "done\n"
    )
    env = {**os.environ, "PATH": f"{os.path.dirname(DLRUN)}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(["bash", "-c", driver], cwd=workdir, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["train", "model=cnn"]


@pytest.mark.parametrize("args", [["--help"], ["train", "--cfg", "job"]])
def test_a_closed_pipe_ends_quietly(workdir, args):
    """`dlrun --help | head -1`: the reader has gone before dlrun writes."""
    proc = subprocess.Popen([DLRUN, *args], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) in (0, 1, 141)  # 141: the shells' code for a closed pipe
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_missing_dataset_leaves_the_data_folder_as_it_was(workdir, tmp_path):
    """No `MNIST/raw` left in an empty folder, whether the download is tried (and fails offline) or not."""
    empty = tmp_path / "EMPTY"
    empty.mkdir()
    for download in ("true", "false"):
        proc = run_dlrun(
            "train", "dataset=mnist", f"dataset.root={empty}", f"dataset.download={download}", cwd=workdir, check=False
        )
        if proc.returncode == 0:
            pytest.skip("this machine could download MNIST")
        line = assert_one_line_error(proc, f"dataset.root={empty}: MNIST files not found", code=proc.returncode)
        assert line.startswith("dlrun: error:")
        assert list(empty.iterdir()) == [], f"dataset.download={download} left {list(empty.rglob('*'))}"
