"""The Colab path, simulated: the launcher in a fresh environment that has torch but not muffin_lib.

A new virtual environment sees this one's packages (torch included) through a ``.pth`` line, as Colab's
Python sees its preinstalled ones, but not muffin_lib. A stand-in ``google.colab`` (tests/colab_stub) is
imported at kernel start, as on Colab; ``MUFFIN_COLAB_ROOT`` plays ``/content``. The launcher runs under
papermill against a local git repository (a file path as ``repo_url``): it must install the project,
run the series in the smoke profile, show the summary, and leave torch as it was. A notebook opened on its
own installs what ``MUFFIN_REPO`` names with its first cell, the same five lines as the launcher's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUB = Path(__file__).resolve().parent / "colab_stub"
LAUNCHER = ROOT / "colab" / "muffin_lab_colab.ipynb"


def _project_repository(target: Path) -> Path:
    """A git repository holding this working tree's files (committed or not), as a fork on GitHub would."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split("\n")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c",
           "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q"], cwd=target, check=True)
    subprocess.run([*git, "add", "-A"], cwd=target, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "fork"], cwd=target, check=True)
    return target


def _colab_python(tmp_path: Path) -> Path:
    """A fresh venv whose Python sees this environment's packages (torch, Jupyter) but not muffin_lib."""
    env_dir = tmp_path / "colab-venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # Path entries added by a .pth line do not run that folder's own .pth files, so this environment's
    # editable muffin_lib stays invisible while torch and the rest are found.
    Path(purelib, "preinstalled.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _torch(python: Path, env: dict) -> str:
    return subprocess.run([str(python), "-c", "import torch; print(torch.__version__, torch.__file__)"],
                          capture_output=True, text=True, check=True, env=env).stdout.strip()


def _colab_env(tmp_path: Path, content: Path) -> dict:
    """The environment of a simulated Colab kernel: google.colab importable (and imported at kernel start),
    ``MUFFIN_COLAB_ROOT`` for /content, no secrets, nothing of this checkout on the path."""
    ipython_dir = tmp_path / "ipython"
    startup = ipython_dir / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-colab.py").write_text("import google.colab  # Colab's kernels start with it\n")
    env = {
        key: value for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "VIRTUAL_ENV", "MUFFIN_DATA_DIR", "MUFFIN_WORK_DIR", "MUFFIN_REPO")
    }
    env.update(PYTHONPATH=str(STUB), IPYTHONDIR=str(ipython_dir), MUFFIN_COLAB_ROOT=str(content),
               MUFFIN_COLAB_SECRETS=json.dumps({}), MUFFIN_PROGRESS="off", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def _has_no_muffin_lib(python: Path, env: dict, cwd: Path) -> bool:
    probe = subprocess.run([str(python), "-c",
                            "import importlib.util as u; print(u.find_spec('muffin_lib'))"],
                           capture_output=True, text=True, env=env, cwd=cwd, check=True)
    return probe.stdout.strip() == "None"


@pytest.mark.slow
def test_colab_launcher_installs_from_a_fork_and_runs_the_series(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("needs git")
    content = tmp_path / "content"  # Colab's /content
    content.mkdir()
    fork = _project_repository(tmp_path / "fork")
    python = _colab_python(tmp_path)
    env = _colab_env(tmp_path, content)
    assert _has_no_muffin_lib(python, env, tmp_path), "the simulated Colab must start without muffin_lib"
    torch_before = _torch(python, env)

    parameters = {
        "repo_url": str(fork),
        "profile": "smoke",
        "use_drive": True,
        "drive_work_dir": str(content / "drive" / "MyDrive" / "muffin-lab" / "work"),
        "data_dir": str(content / "data" / "muffin-vs-chihuahua"),
        "extra_parameters": {"source": "synthetic"},  # Kaggle is out of reach here
    }
    args = [str(python), "-m", "papermill", str(LAUNCHER), str(tmp_path / "launcher-out.ipynb"), "--cwd",
            str(tmp_path)]
    for name, value in parameters.items():
        args += ["-y", json.dumps({name: value})]
    run = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1500)
    assert run.returncode == 0, run.stderr[-3000:]

    assert (content / "muffin-lab" / "pyproject.toml").is_file(), "the launcher clones repo_url into /content"
    work_dir = content / "drive" / "MyDrive" / "muffin-lab" / "work"
    summary = json.loads((work_dir / "summary.json").read_text())
    assert [n["status"] for n in summary["notebooks"].values()] == ["ok"] * 10
    executed = json.loads((tmp_path / "launcher-out.ipynb").read_text())
    shown = "".join(
        "".join(output.get("data", {}).get("text/markdown", ""))
        for cell in executed["cells"] for output in cell.get("outputs", [])
    )
    assert "summary of the notebook series" in shown, "the launcher shows summary.md"
    assert _torch(python, env) == torch_before, "pip must not replace the preinstalled torch"


@pytest.mark.slow
def test_a_notebooks_install_cell_installs_what_muffin_repo_names(tmp_path):
    """A notebook opened alone: its install cell pip-installs ``MUFFIN_REPO`` (here ``git+file://`` of a fork,
    as ``git+https://`` of one on GitHub), and the same kernel imports muffin_lib right after."""
    from muffin_lib.study import colab

    if shutil.which("git") is None:
        pytest.skip("needs git")
    content = tmp_path / "content"
    content.mkdir()
    fork = _project_repository(tmp_path / "fork")
    python = _colab_python(tmp_path)
    env = {**_colab_env(tmp_path, content), "MUFFIN_REPO": f"git+file://{fork}"}
    cell = colab.colab_install_source()
    outside = subprocess.run([str(python), "-c", cell], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert outside.returncode == 0 and _has_no_muffin_lib(python, env, tmp_path), "outside Colab: nothing"
    torch_before = _torch(python, env)
    script = f"import google.colab\n{cell}\nimport muffin_lib.study.notebook\nprint(muffin_lib.__file__)"
    run = subprocess.run([str(python), "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    installed = Path(run.stdout.strip().splitlines()[-1])
    assert installed.name == "__init__.py", installed
    assert fork not in installed.parents, "installed, not run from the fork"
    assert _torch(python, env) == torch_before, "pip must not replace the preinstalled torch"
