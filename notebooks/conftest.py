"""For `pytest --nbmake notebooks/`: the kernels nbmake starts (cwd = notebooks/) inherit this environment.

They import this checkout's muffin_lib even where the project is not pip-installed, and print plain-text
progress bars. The smoke settings themselves are the nbmake mocks on each notebook's parameters cell.
"""

import os
from pathlib import Path

REPO_ROOT = str(Path(__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
os.environ.setdefault("MUFFIN_PROGRESS", "text")
