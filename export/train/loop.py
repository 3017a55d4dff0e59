"""What the trainers of the shipped models share: the optimiser step with a smoothed loss on the progress bar,
an optional exponential moving average of the weights, checkpoints (model, optimiser, average, step) for --resume,
and the --minutes limit."""

from __future__ import annotations

import time
from pathlib import Path

import torch


class WeightAverage:
    """Exponential moving average of a model's weights and buffers (Polyak averaging). Why: with batches of 8 the
    weights wander from step to step, and so do the maps of other imagery; the average sits in the middle of the
    wander. The decay is warmed up ((1 + n) / (10 + n)) so early steps do not keep the random decoder."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.state[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.state[k].copy_(v)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "state": self.state}

    def load_state_dict(self, saved: dict) -> None:
        self.updates = saved["updates"]
        self.state = {k: v.clone() for k, v in saved["state"].items()}

    def copy_to(self, model: torch.nn.Module) -> None:
        model.load_state_dict(self.state)


class StepLoop:
    def __init__(
        self,
        model,
        opt,
        ckpt: Path,
        iterations: int,
        checkpoint_every: int,
        minutes: float | None,
        bar,
        average: WeightAverage | None = None,
    ):
        self.model, self.opt, self.ckpt, self.bar, self.average = model, opt, ckpt, bar, average
        self.iterations, self.every, self.minutes = iterations, checkpoint_every, minutes
        self.t0 = time.time()
        self.running: float | None = None

    def step(self, step: int, loss: torch.Tensor) -> tuple[int, bool]:
        """One optimiser step on ``loss``; returns (steps done, whether the time limit stops the run here)."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.average is not None:
            self.average.update(self.model)
        value = loss.item()
        self.running = value if self.running is None else 0.98 * self.running + 0.02 * value
        self.bar.set_postfix(loss=f"{self.running:.3f}")
        done = step + 1
        stop = self.minutes is not None and (time.time() - self.t0) > self.minutes * 60
        if done % self.every == 0 or done == self.iterations or stop:
            state = {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "step": done}
            if self.average is not None:
                state["average"] = self.average.state_dict()
            torch.save(state, self.ckpt)
        return done, stop


def resume(ckpt: Path, model, opt, device: str, log, average: WeightAverage | None = None) -> int:
    """Load a checkpoint into model, optimiser (and weight average); returns the step to continue from."""
    state = torch.load(ckpt, map_location=device, weights_only=False)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    if average is not None:
        if "average" not in state:
            raise ValueError(f"{ckpt} has no weight average: resume it without --average")
        average.load_state_dict(state["average"])
    log(f"resumed from {ckpt} at step {state['step']}")
    return state["step"]


def save_weights(model, path: Path) -> None:
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, path)
