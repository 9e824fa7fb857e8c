"""Options -> the task -> the engine -> bundle metadata: the one place that knows both the task registry and the
training engine (``train``), and routes a flat ``train(**options)`` to them (``options``)."""
