"""What the notebooks say: one tested function per finding sentence or results block."""

from muffin_lib.study.report.data import *  # noqa: F403
from muffin_lib.study.report.models import *  # noqa: F403
from muffin_lib.study.report.selection import *  # noqa: F403
