"""Progress bars that fit where the code runs.

Widgets in JupyterLab and Colab (tqdm.auto, needs ipywidgets), plain text under papermill, nbmake and
the terminal, nothing in quiet mode. ``MUFFIN_PROGRESS`` = ``auto`` | ``text`` | ``off`` overrides;
the runner and the test suite set ``text`` because executed notebooks should hold readable text.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable


def progress_mode() -> str:
    mode = os.environ.get("MUFFIN_PROGRESS", "auto").lower()
    return mode if mode in ("auto", "text", "off") else "auto"


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs):
    """A tqdm bar; ``enabled=False`` (quiet mode) or ``MUFFIN_PROGRESS=off`` gives a silent one."""
    mode = progress_mode()
    if not enabled or mode == "off":
        kwargs["disable"] = True
    if mode == "text":
        from tqdm.std import tqdm

        # A transient bar (leave=False, e.g. the batches inside an epoch) can only be erased with cursor
        # codes, which plain text (executed notebooks, logs) shows as garbage such as "[A".
        if kwargs.get("leave") is False:
            kwargs["disable"] = True
        kwargs.setdefault("file", sys.stdout)
        kwargs.setdefault("mininterval", 2.0)
        kwargs.setdefault("ascii", True)
    else:
        from tqdm.auto import tqdm
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
