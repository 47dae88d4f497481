"""A small anchor-free single-stage detector (FCOS/CenterNet family) in plain PyTorch.

Why this design: the lake's first dataset is chest X-rays where every object is
large and always present (lungs), and its score is COCO mAP50-95, which rewards
precise boxes far more than finding them. So the network is one stride-8 level fed
by a small top-down pyramid (large receptive field, fine grid), each grid point
regresses the distances to the four box sides (left, top, right, bottom) and an
IoU-aware class score: the score a point gives is trained to be the IoU its box
reaches, so the best-placed box ranks first after NMS.

Inputs: float [N, C, S, S] scaled to [0, 1] (pixels / 255, letterboxed, pad 114).
`Detector.forward` gives raw outputs for the loss; `Detector.decode` gives the
YOLOv8 layout [N, 4 + nc, A] (cx, cy, w, h in input pixels, sigmoid scores).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional

STRIDE = 8


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """What fixes a network's shape (stored with the model so it can be rebuilt)."""

    num_classes: int
    size: int = 256
    channels: int = 1
    width: int = 16

    def __post_init__(self) -> None:
        if self.size % 32 or self.size < 64:
            raise ValueError(
                f"expected an input size that is a multiple of 32, >= 64, got {self.size}"
            )
        if self.num_classes < 1:
            raise ValueError(f"expected at least one class, got {self.num_classes}")
        if self.channels not in (1, 3):
            raise ValueError(f"expected 1 or 3 channels, got {self.channels}")


class ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
            nn.BatchNorm2d(cout),
            nn.SiLU(inplace=True),
        )


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvBN(channels, channels), ConvBN(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = x + self.body(x)
        return out


def _stage(cin: int, cout: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(ConvBN(cin, cout, stride=2), *(Residual(cout) for _ in range(blocks)))


class Detector(nn.Module):
    """Backbone (strides 2..32), top-down fusion to stride 8, one decoupled head."""

    points: Tensor  # [2, A] grid point centres in input pixels (a buffer)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.stem = ConvBN(config.channels, w // 2, stride=2)
        self.stage2 = _stage(w // 2, w, 1)
        self.stage3 = _stage(w, 2 * w, 2)
        self.stage4 = _stage(2 * w, 3 * w, 2)
        self.stage5 = _stage(3 * w, 4 * w, 2)
        self.lateral5 = ConvBN(4 * w, 2 * w, 1)
        self.lateral4 = ConvBN(3 * w, 2 * w, 1)
        self.lateral3 = ConvBN(2 * w, 2 * w, 1)
        self.smooth4 = ConvBN(2 * w, 2 * w)
        self.smooth3 = ConvBN(2 * w, 2 * w)
        self.cls_branch = nn.Sequential(ConvBN(2 * w, 2 * w), ConvBN(2 * w, 2 * w))
        self.box_branch = nn.Sequential(ConvBN(2 * w, 2 * w), ConvBN(2 * w, 2 * w))
        self.cls_out = nn.Conv2d(2 * w, config.num_classes, 1)
        self.box_out = nn.Conv2d(2 * w, 4, 1)
        # Focal-loss style prior: every point starts as "probably background".
        with torch.no_grad():
            self.cls_out.bias.fill_(-4.6)  # type: ignore[union-attr]
            self.box_out.bias.zero_()  # type: ignore[union-attr]
        nn.init.normal_(self.box_out.weight, std=0.01)
        grid = config.size // STRIDE
        centres = (torch.arange(grid, dtype=torch.float32) + 0.5) * STRIDE
        ys, xs = torch.meshgrid(centres, centres, indexing="ij")
        self.register_buffer("points", torch.stack([xs.reshape(-1), ys.reshape(-1)], 0))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Raw class logits [N, nc, A] and side distances [N, 4, A] in input pixels."""
        x = (images - 0.5) / 0.25
        c2 = self.stage2(self.stem(x))
        c3 = self.stage3(c2)
        c4 = self.stage4(c3)
        c5 = self.stage5(c4)
        p5 = self.lateral5(c5)
        p4 = self.smooth4(
            self.lateral4(c4) + functional.interpolate(p5, scale_factor=2.0, mode="nearest")
        )
        p3 = self.smooth3(
            self.lateral3(c3) + functional.interpolate(p4, scale_factor=2.0, mode="nearest")
        )
        logits = self.cls_out(self.cls_branch(p3)).flatten(2)
        # softplus keeps distances positive without exp's overflow; x16 px starts
        # boxes near the size of a typical object at stride 8.
        sides = functional.softplus(self.box_out(self.box_branch(p3))).flatten(2) * (2 * STRIDE)
        return logits, sides

    def decode(self, images: Tensor) -> Tensor:
        """The YOLOv8 layout: [N, 4 + nc, A] of cx, cy, w, h and sigmoid scores."""
        logits, sides = self(images)
        return torch.cat([sides_to_cxcywh(self.points, sides), logits.sigmoid()], 1)


def sides_to_xyxy(points: Tensor, sides: Tensor) -> Tensor:
    """Boxes [N, 4, A] (x_min, y_min, x_max, y_max) from points [2, A] and sides [N, 4, A]."""
    return torch.cat([points - sides[:, :2], points + sides[:, 2:]], 1)


def sides_to_cxcywh(points: Tensor, sides: Tensor) -> Tensor:
    """Boxes [N, 4, A] (cx, cy, w, h) from points [2, A] and sides [N, 4, A]."""
    left_top, right_bottom = sides[:, :2], sides[:, 2:]
    return torch.cat([points + (right_bottom - left_top) / 2, left_top + right_bottom], 1)
