"""Training: ``models``, ``augment``, ``tensors``, ``runtime`` (and ``bf16_probe``), ``recipe``
(``TrainConfig``), ``loop`` (``fit``, ``evaluate``, ``train_one_epoch``, ``TrainStep``), ``checkpoints``,
``metrics``, ``calibration``, ``explain``, ``train``/``predict`` (the CLI commands) and ``bench``. Imports
only from ``data`` and the top level."""
