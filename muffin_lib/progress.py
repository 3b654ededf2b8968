"""Progress bars that fit where the code runs: widgets in Jupyter, plain text elsewhere (``MUFFIN_PROGRESS`` =
``auto`` | ``text`` | ``off``); with ``MUFFIN_PROGRESS_FILE`` set, open bars also write their line there for
the runner's :func:`watch_progress`, since a notebook's own output goes to its executed copy."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from muffin_lib.files import write_text_atomic

PROGRESS_FILE_ENV = "MUFFIN_PROGRESS_FILE"
_open_bars: dict[int, str] = {}  # this process's open bars, outermost first: id -> its last line


def _report(bar, line: str | None) -> None:
    """Write every open bar's line to the progress file (the runner reads it); ``None`` closes ``bar``."""
    path = os.environ.get(PROGRESS_FILE_ENV)
    if not path:
        return
    if line is None:
        _open_bars.pop(id(bar), None)
    else:
        _open_bars[id(bar)] = line
    with contextlib.suppress(OSError):  # the runner reads it meanwhile: whole lines only
        write_text_atomic(path, " | ".join(_open_bars.values()))


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs):
    """A tqdm bar; ``enabled=False`` (quiet mode) or ``MUFFIN_PROGRESS=off`` gives a silent one."""
    mode = os.environ.get("MUFFIN_PROGRESS", "auto").lower()
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
    if os.environ.get(PROGRESS_FILE_ENV) and not kwargs.get("disable"):
        tqdm = _reporting(tqdm)
    return tqdm(iterable, **kwargs)


def _reporting(base):
    """``base`` (a tqdm class) that also reports its line to the progress file at most once a second."""
    class Reporting(base):
        _reported_at = 0.0

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            _report(self, _line(self))

        def update(self, n=1):
            shown = super().update(n)
            if time.monotonic() - self._reported_at >= 1.0 or self.n == self.total:
                self._reported_at = time.monotonic()
                _report(self, _line(self))
            return shown

        def close(self):
            _report(self, None)
            super().close()

    return Reporting


def _line(bar) -> str:
    """A bar's state in a few words: "deeper_cnn 3/8 epoch [01:10<01:45]"."""
    fmt, elapsed = bar.format_dict, bar.format_interval(bar.format_dict["elapsed"])
    rate, total = fmt.get("rate"), fmt.get("total")
    remaining = bar.format_interval((total - fmt["n"]) / rate) if rate and total else "?"
    count = f"{fmt['n']}/{total}" if total else f"{fmt['n']}"
    return f"{fmt.get('prefix') or ''} {count} {fmt.get('unit', 'it')} [{elapsed}<{remaining}]".strip()


@contextlib.contextmanager
def watch_progress(path: Path, show: Callable[[str], None], interval: float = 1.0) -> Iterator[None]:
    """While the block runs, pass each new line of the progress file ``path`` to ``show`` (from a thread);
    sets ``MUFFIN_PROGRESS_FILE`` for the kernels started inside it."""
    path.unlink(missing_ok=True)
    saved, stop = os.environ.get(PROGRESS_FILE_ENV), threading.Event()
    os.environ[PROGRESS_FILE_ENV] = str(path)

    def poll() -> None:
        last = ""
        while not stop.wait(interval):
            with contextlib.suppress(OSError):
                line = path.read_text().strip()
                if line and line != last:
                    last = line
                    show(line)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        if saved is None:
            os.environ.pop(PROGRESS_FILE_ENV, None)
        else:
            os.environ[PROGRESS_FILE_ENV] = saved
