"""``drive.mount``: creates the mount point's ``MyDrive`` under the stand-in ``/content``."""

import os
from pathlib import Path


def mount(mountpoint: str, force_remount: bool = False, **kwargs) -> None:
    root = os.environ["MUFFIN_COLAB_ROOT"]
    target = Path(str(mountpoint).replace("/content", root, 1))
    (target / "MyDrive").mkdir(parents=True, exist_ok=True)
    print(f"Mounted at {mountpoint}")
