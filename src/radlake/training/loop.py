"""Training: loss, optimiser, EMA, early stopping on the validation split's mAP.

Determinism: one seed fixes the weights' initialisation (torch.manual_seed), the
batch order and every augmentation (one torch.Generator seeded with it); the thread
count is fixed (recorded with the model) and `torch.use_deterministic_algorithms`
is on, so the same seed, data and thread count give the same weights bit for bit.
Both settings are process-wide: training belongs in its own process (the CLI).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional

from radlake.training import TrainingError
from radlake.training.config import TrainConfig
from radlake.training.data import Batch, Sample, augment, collate, mirror_classes
from radlake.training.metrics import coco_map, predict
from radlake.training.model import STRIDE, Detector, ModelConfig, sides_to_xyxy


@dataclass(frozen=True, slots=True)
class EpochReport:
    epoch: int
    loss: float
    val_map50_95: float | None
    val_map50: float | None
    seconds: float


@dataclass
class TrainResult:
    model: Detector
    best_epoch: int
    best_val_map50_95: float
    history: list[EpochReport]
    stopped_early: bool


def detection_loss(
    model: Detector, batch: Batch, centre_radius: float
) -> tuple[Tensor, dict[str, float]]:
    """Quality focal loss on IoU-aware scores, GIoU and L1 on the assigned boxes.

    Assignment (FCOS centre sampling): a grid point is positive for a box when it
    lies inside the box and within centre_radius strides of its centre; the point
    nearest the centre always is; a point claimed by two boxes goes to the smaller.
    """
    logits, sides = model(batch.images)
    points = model.points  # [2, A]
    boxes, classes = batch.boxes, batch.classes  # [N, M, 4], [N, M]
    valid = classes >= 0
    px, py = points[0].view(1, 1, -1), points[1].view(1, 1, -1)
    x0, y0, x1, y1 = (boxes[..., i].unsqueeze(-1) for i in range(4))
    inside = (px > x0) & (px < x1) & (py > y0) & (py < y1)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    reach = centre_radius * STRIDE
    near = ((px - cx).abs() < reach) & ((py - cy).abs() < reach)
    candidate = inside & near & valid.unsqueeze(-1)
    distance = (px - cx) ** 2 + (py - cy) ** 2  # [N, M, A]
    nearest = distance.argmin(-1, keepdim=True)
    candidate.scatter_(-1, nearest, valid.unsqueeze(-1) | candidate.gather(-1, nearest))
    area = ((x1 - x0) * (y1 - y0)).expand_as(distance)
    claimed = torch.where(candidate, area, torch.full_like(area, math.inf))
    best_area, owner = claimed.min(1)  # [N, A]
    positive = torch.isfinite(best_area)
    targets = torch.zeros_like(logits)
    pred_xyxy = sides_to_xyxy(points, sides).permute(0, 2, 1)  # [N, A, 4]
    n_pos = int(positive.sum())
    if n_pos:
        image_index, anchor_index = positive.nonzero(as_tuple=True)
        owners = owner[image_index, anchor_index]
        gt = boxes[image_index, owners]
        gt_class = classes[image_index, owners]
        pred = pred_xyxy[image_index, anchor_index]
        iou = box_iou_pairs(pred, gt)
        targets[image_index, gt_class, anchor_index] = iou.detach().clamp(min=0.01)
        giou = (1 - generalized_iou(pred, gt)).mean()
        l1 = (pred - gt).abs().mean() / model.config.size
    else:
        giou = l1 = logits.sum() * 0
    probability = logits.sigmoid()
    focal = functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    quality = (focal * (probability - targets).abs().pow(2)).sum() / max(n_pos, 1)
    total = quality + 2.0 * giou + 5.0 * l1
    parts = {"cls": quality, "giou": giou, "l1": l1}
    return total, {name: float(value.detach()) for name, value in parts.items()}


def box_iou_pairs(a: Tensor, b: Tensor) -> Tensor:
    """IoU of a[i] with b[i]."""
    low, high = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (high - low).clamp(min=0).prod(-1)
    union = (a[:, 2:] - a[:, :2]).prod(-1) + (b[:, 2:] - b[:, :2]).prod(-1) - inter
    return inter / union.clamp(min=1e-9)


def generalized_iou(a: Tensor, b: Tensor) -> Tensor:
    """GIoU of a[i] with b[i] (Rezatofighi et al. 2019)."""
    iou = box_iou_pairs(a, b)
    low, high = torch.minimum(a[:, :2], b[:, :2]), torch.maximum(a[:, 2:], b[:, 2:])
    hull = (high - low).prod(-1).clamp(min=1e-9)
    low_i, high_i = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (high_i - low_i).clamp(min=0).prod(-1)
    union = inter / iou.clamp(min=1e-9)
    return iou - (hull - union) / hull


class ModelEMA:
    """Exponential moving average of the weights (the averaged model is evaluated)."""

    def __init__(self, model: Detector, decay: float) -> None:
        self.model = copy.deepcopy(model).eval()
        self.decay = decay
        self.updates = 0
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: Detector) -> None:
        self.updates += 1
        # Ramp up: early weights are noise, so average over fewer steps at first.
        decay = self.decay * (1 - math.exp(-self.updates / 50))
        current = model.state_dict()
        for name, value in self.model.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(decay).add_(current[name].detach(), alpha=1 - decay)
            else:
                value.copy_(current[name])


Progress = Callable[[EpochReport, int], None]


def seed_everything(seed: int, threads: int) -> torch.Generator:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


def train_detector(
    train: Sequence[Sample],
    val: Sequence[Sample],
    num_classes: int,
    config: TrainConfig,
    progress: Progress | None = None,
    class_names: Sequence[str] | None = None,
) -> TrainResult:
    """Train from scratch; the EMA weights of the best validation epoch are returned.

    Without validation images the last epoch's weights are kept. Images are mirrored
    only when class_names are given and allow it (`data.mirror_classes`).

    Raises:
        TrainingError: there is no training image with a box.
    """
    if not any(len(s.classes) for s in train):
        raise TrainingError("expected training images with boxes, found none in the training split")
    generator = seed_everything(config.seed, config.threads)
    mirror = mirror_classes(class_names) if class_names is not None else None
    model = Detector(ModelConfig(num_classes, config.size, config.channels, config.width))
    ema = ModelEMA(model, config.ema_decay)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup = max(1, steps_per_epoch * config.warmup_epochs)

    def rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress_ = (step - warmup) / max(1, total_steps - warmup)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress_))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    history: list[EpochReport] = []
    best_map, best_epoch, best_state = -1.0, 0, copy.deepcopy(ema.model.state_dict())
    stopped_early = False
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(train), generator=generator).tolist()
        losses: list[float] = []
        for start in range(0, len(order), config.batch_size):
            chosen = [train[i] for i in order[start : start + config.batch_size]]
            batch = augment(collate(chosen), config.augment, generator, mirror)
            loss, _ = detection_loss(model, batch, config.centre_radius)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            scheduler.step()
            ema.update(model)
            losses.append(float(loss.detach()))
        val_map = val_map50 = None
        if val and (epoch % config.eval_every == 0 or epoch == config.epochs):
            score = coco_map(val, predict(ema.model, val), num_classes)
            val_map, val_map50 = score.map50_95, score.map50
            if val_map > best_map:
                best_map, best_epoch = val_map, epoch
                best_state = copy.deepcopy(ema.model.state_dict())
        report = EpochReport(
            epoch, sum(losses) / len(losses), val_map, val_map50, time.perf_counter() - started
        )
        history.append(report)
        if progress is not None:
            progress(report, config.epochs)
        if val and epoch - best_epoch >= config.patience:
            stopped_early = True
            break
    if not val:
        best_epoch, best_state = history[-1].epoch, ema.model.state_dict()
    ema.model.load_state_dict(best_state)
    return TrainResult(ema.model.eval(), best_epoch, max(best_map, 0.0), history, stopped_early)
