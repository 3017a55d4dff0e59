"""Test-time views: a runtime that also runs each batch flipped and averages the outputs, flipped back.

`views`: "none" (the model once), "flips" (as it is, left-right, up-down, both: 4 runs). The outputs are the
model's own (logits or probabilities) averaged per pixel; a tile's blending and the class choice come after. Why:
a model's errors under flips are partly independent, so their average is steadier (measured on the shipped
land-cover model: bench/landcover_views.py, MODEL_CARD.md); it costs one model run per view.
"""

from __future__ import annotations

import numpy as np

VIEWS = ("none", "flips")
_FLIPS = ((), (-1,), (-2,), (-2, -1))  # axes flipped: none, columns, rows, both


class FlipViews:
    def __init__(self, runtime) -> None:
        self.runtime = runtime
        self.providers = runtime.providers
        self.precision_check = getattr(runtime, "precision_check", {})

    @property
    def device_label(self) -> str:
        return f"{self.runtime.device_label}, 4 views"

    @property
    def device_detail(self) -> str:
        return self.runtime.device_detail

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        total = None
        for axes in _FLIPS:
            view = {k: np.ascontiguousarray(np.flip(v, axes)) if axes else v for k, v in feeds.items()}
            out = self.runtime.run(view).astype(np.float32)
            out = np.flip(out, axes) if axes else out
            total = out if total is None else total + out
        return total / len(_FLIPS)
