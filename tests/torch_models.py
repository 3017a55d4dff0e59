"""Small torch models used as export entry points by the tests (`--entry torch_models:NAME`)."""

from __future__ import annotations

import torch


def small_segmenter(n_classes: int = 4, seed: int = 0) -> torch.nn.Module:
    """Two 3x3 convs: receptive field 5 px. Inputs: 'rgb' (normalised)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, n_classes, 3, padding=1)
    ).eval()


class _TwoInputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.head = torch.nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, rgb: torch.Tensor, ndsm: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([rgb, ndsm], dim=1))


def two_inputs() -> torch.nn.Module:
    return _TwoInputs().eval()


class _Unsupported(torch.nn.Module):
    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft2(rgb).real[:, :2]  # aten::fft_fft2 has no ONNX export at opset 17


def unsupported() -> torch.nn.Module:
    return _Unsupported().eval()


class _SiameseChange(torch.nn.Module):
    """Shared (identity) encoder on both dates; change logit from the mean absolute difference."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Identity()
        self.smooth = torch.nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        diff = (self.encoder(before) - self.encoder(after)).abs().mean(dim=1, keepdim=True)
        change = 20.0 * (self.smooth(diff) - 0.1)
        return torch.cat([-change, change], dim=1)  # classes: no change, change


def siamese_change() -> torch.nn.Module:
    return _SiameseChange().eval()
