"""The install files agree with each other and keep Colab's preinstalled torch."""

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _requirements(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith(("#", "-"))]


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
