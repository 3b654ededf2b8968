"""muffin_lib, the library behind the muffin-lab notebooks and the CLI (``python -m muffin_lib``); data
flows one way: ``data`` -> ``training`` -> ``selection`` (cross-validation, test evaluation) -> ``study``."""

__version__ = "0.1.0"
