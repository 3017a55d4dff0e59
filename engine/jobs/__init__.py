"""The tasks: one module each (parameters dataclass, run function, OPTIONS rows, result with `lines()`), registered
in engine/tasks.py; their helpers beside them (change_maps, crown_detector, crown_shapes, accuracy_report,
batch_worker) and what every task shares in `common` (messages, progress stages, atomic outputs)."""
