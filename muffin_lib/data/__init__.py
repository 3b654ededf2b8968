"""Data, in the order it flows: ``fetch``/``extract`` get it, ``classes``, ``scan`` and ``twins`` check it,
``splits`` divides it, ``imageio``, ``cache`` and ``datasets`` decode it for PyTorch, ``synthetic`` stands in.
Nothing here imports from ``training``, ``selection`` or ``study``.
"""
