"""The install files agree with each other and keep Colab's preinstalled torch."""

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _requirements(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith(("#", "-"))]


def _name(requirement: str) -> str:
    return re.split(r"[<>=\[ ;]", requirement, maxsplit=1)[0].lower()


def test_requirements_txt_is_the_core_plus_the_lab_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    expected = project["dependencies"] + project["optional-dependencies"]["lab"]
    assert sorted(_requirements(ROOT / "requirements.txt")) == sorted(expected)


def test_torch_has_no_upper_bound_so_colab_keeps_its_build():
    for requirement in _requirements(ROOT / "requirements.txt"):
        if _name(requirement) in ("torch", "torchvision"):
            assert "<" not in requirement and "==" not in requirement, requirement


def test_the_wheel_holds_every_sub_package(tmp_path):
    # What Colab's `pip install git+URL` gets: a built wheel, not this checkout.
    import importlib.util
    import subprocess
    import sys
    import zipfile

    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(tmp_path),
               str(ROOT)]
    subprocess.run(command, check=True, capture_output=True)
    (wheel,) = tmp_path.glob("muffin_lab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {p.relative_to(ROOT).as_posix() for p in (ROOT / "muffin_lib").rglob("__init__.py")}
    assert len(packages) >= 5 and packages <= names, sorted(packages - names)
