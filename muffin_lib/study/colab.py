"""The Colab links and install cell: the badge of every notebook, the one short install cell they and the
launcher share, and ``sync_colab_cells``, which rewrites them from :data:`REPO_URL`
(``python -m muffin_lib.study.colab``)."""

from __future__ import annotations

import re
from pathlib import Path

# The one place the repository is named: badges, the Colab install cells (their default when MUFFIN_REPO
# is unset) and the launcher use it. After changing it, `python -m muffin_lib.study.colab` rewrites them.
REPO_URL = "https://github.com/muffin-lab/muffin-lab"
REPO_BRANCH = "main"
COLAB_BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"


def colab_url(notebook_path: str, repo_url: str = REPO_URL, branch: str = REPO_BRANCH) -> str:
    """The colab.research.google.com address that opens ``notebook_path`` (relative to the repo root)."""
    repo = repo_url.removeprefix("https://github.com/").removesuffix(".git").strip("/")
    return f"https://colab.research.google.com/github/{repo}/blob/{branch}/{notebook_path}"


def colab_badge(notebook_path: str, repo_url: str = REPO_URL) -> str:
    """Markdown of the "Open in Colab" badge for ``notebook_path`` (relative to the repo root)."""
    return f"[![Open In Colab]({COLAB_BADGE_IMAGE})]({colab_url(notebook_path, repo_url)})"


def colab_install_source(repo_url: str = REPO_URL) -> str:
    """The install cell of every notebook and of the Colab launcher: inside Colab only, when ``muffin_lib``
    is missing, ``pip install`` the code that ``MUFFIN_REPO`` names (a folder, installed editable so that
    ``notebooks/`` stays beside it, or anything pip takes: ``git+URL``, a wheel), by default ``REPO_URL``.
    The launcher sets ``MUFFIN_REPO`` (a clone of its ``repo_url``, a Drive copy or an uploaded zip).
    requirements.txt has no upper bounds, so Colab's torch already satisfies them and is left alone."""
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
    """Rewrite the badge (first line of the first cell) and the cell tagged ``colab-install`` of each notebook,
    and the launcher's ``repo_url`` default, from :data:`REPO_URL`; returns the notebooks that changed.
    Default: the series and the Colab launcher."""
    import nbformat

    from muffin_lib.config import PACKAGE_PARENT as root

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
                cell.source = re.sub(r'^repo_url = "[^"]*"', f'repo_url = "{repo_url}"', cell.source, flags=re.M)
        if nbformat.writes(nb) != before:
            nbformat.write(nb, path)
            changed.append(path)
    return changed


if __name__ == "__main__":
    for changed_path in sync_colab_cells():
        print(f"updated {changed_path}")
