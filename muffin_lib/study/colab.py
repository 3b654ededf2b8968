"""The Colab badge and install cell of every notebook; ``python -m muffin_lib.study.colab`` rewrites them."""

from __future__ import annotations

import re
from pathlib import Path

from muffin_lib.config import PACKAGE_PARENT

# The one place the repository is named (badges, install cells, the launcher's default).
REPO_URL = "https://github.com/muffin-lab/muffin-lab"
REPO_BRANCH = "main"
COLAB_BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"


def colab_url(notebook_path: str, repo_url: str = REPO_URL, branch: str = REPO_BRANCH) -> str:
    repo = repo_url.removeprefix("https://github.com/").removesuffix(".git").strip("/")
    return f"https://colab.research.google.com/github/{repo}/blob/{branch}/{notebook_path}"


def colab_badge(notebook_path: str, repo_url: str = REPO_URL) -> str:
    return f"[![Open In Colab]({COLAB_BADGE_IMAGE})]({colab_url(notebook_path, repo_url)})"


def colab_install_source(repo_url: str = REPO_URL) -> str:
    """In Colab without muffin_lib only: pip install what MUFFIN_REPO names (default REPO_URL)."""
    return (
        "import importlib.util, os, subprocess, sys  # noqa: E401, I001  (Colab: MUFFIN_REPO, "
        "colab/README.md)\n"
        'if "google.colab" in sys.modules and importlib.util.find_spec("muffin_lib") is None:\n'
        f'    repo = os.environ.get("MUFFIN_REPO", "git+{repo_url}")\n'
        '    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", '
        '*["-e"] * os.path.isdir(repo), repo])\n'
        "    sys.path.insert(0, repo)  # a folder installs editable, which this running kernel cannot see yet"
    )


COLAB_INSTALL_TAG = "colab-install"


def sync_colab_cells(paths: list[Path] | None = None, repo_url: str = REPO_URL) -> list[Path]:
    """Rewrite each notebook's badge, install cell and launcher default; returns those that changed."""
    import nbformat

    root = PACKAGE_PARENT
    if paths is None:
        paths = sorted(root.glob("notebooks/[0-9][0-9]_*.ipynb")) + sorted(root.glob("colab/*.ipynb"))
    changed = []
    for path in map(Path, paths):
        nb = nbformat.read(path, as_version=4)
        relative = path.resolve().relative_to(root).as_posix()
        before = nbformat.writes(nb)
        first_lines = nb.cells[0].source.split("\n")
        if first_lines[0].startswith("[![Open In Colab]"):
            nb.cells[0].source = "\n".join([colab_badge(relative, repo_url), *first_lines[1:]])
        for cell in nb.cells:
            tags = cell.metadata.get("tags", [])
            if COLAB_INSTALL_TAG in tags:
                cell.source = colab_install_source(repo_url)
            if "parameters" in tags and path.parent.name == "colab":  # the launcher's repo_url default
                cell.source = re.sub(r'^repo_url = "[^"]*"', f'repo_url = "{repo_url}"', cell.source,
                                     flags=re.M)
        if nbformat.writes(nb) != before:
            nbformat.write(nb, path)
            changed.append(path)
    return changed


if __name__ == "__main__":
    for changed_path in sync_colab_cells():
        print(f"updated {changed_path}")
