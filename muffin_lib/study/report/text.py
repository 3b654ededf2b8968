"""Numbers as the notebooks print them."""

from __future__ import annotations

import numpy as np


def format_ci(value: float, low: float | None, high: float | None, digits: int = 3) -> str:
    """``0.102 [0.085, 0.123]``; the interval is left out when it is unknown (NaN/None)."""
    if low is None or high is None or not np.isfinite(low) or not np.isfinite(high):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
