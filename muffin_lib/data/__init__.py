"""Data: from the Kaggle archive to decoded tensors, in the order the data flows.

``fetch``/``extract`` get the dataset, ``classes`` names its classes (the class folders), ``scan`` audits it (unreadable files, exact and near duplicates),
``twins`` finds near-duplicate groups, ``splits`` makes the twin-grouped hold-out and folds,
``imageio`` decodes and resizes, ``cache`` keeps decoded uint8 tensors on disk, ``datasets`` wraps
them for PyTorch, ``synthetic`` makes a stand-in dataset for tests and offline runs.
Nothing here imports from ``training``, ``selection`` or ``study``.
"""
