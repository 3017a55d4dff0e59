"""What the trainers of the shipped models share: the optimiser step with a smoothed loss on the progress bar,
checkpoints (model, optimiser, step) for --resume, and the --minutes limit."""

from __future__ import annotations

import time
from pathlib import Path

import torch


class StepLoop:
    def __init__(self, model, opt, ckpt: Path, iterations: int, checkpoint_every: int, minutes: float | None, bar):
        self.model, self.opt, self.ckpt, self.bar = model, opt, ckpt, bar
        self.iterations, self.every, self.minutes = iterations, checkpoint_every, minutes
        self.t0 = time.time()
        self.running: float | None = None

    def step(self, step: int, loss: torch.Tensor) -> tuple[int, bool]:
        """One optimiser step on ``loss``; returns (steps done, whether the time limit stops the run here)."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        value = loss.item()
        self.running = value if self.running is None else 0.98 * self.running + 0.02 * value
        self.bar.set_postfix(loss=f"{self.running:.3f}")
        done = step + 1
        stop = self.minutes is not None and (time.time() - self.t0) > self.minutes * 60
        if done % self.every == 0 or done == self.iterations or stop:
            state = {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "step": done}
            torch.save(state, self.ckpt)
        return done, stop


def resume(ckpt: Path, model, opt, device: str, log) -> int:
    """Load a checkpoint into model and optimiser; returns the step to continue from."""
    state = torch.load(ckpt, map_location=device, weights_only=False)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    log(f"resumed from {ckpt} at step {state['step']}")
    return state["step"]


def save_weights(model, path: Path) -> None:
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, path)
