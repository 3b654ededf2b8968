"""Training: models and how one is trained, scored and used.

``models`` (the three seed CNNs and transfer), ``augment`` (batched augmentation on the device),
``tensors`` (input checks, normalisation, batch placement), ``runtime`` (device, precision, threads),
``engine`` (``TrainConfig`` -- the recipe's one home -- and ``fit``/``evaluate``), ``checkpoints``,
``metrics`` (zero-one loss with Wilson intervals), ``train``/``predict`` (the CLI commands) and
``bench`` (our pipeline against the reference study's). Imports only from ``data`` and the top level.
"""
