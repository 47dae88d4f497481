"""The settings of a training run: plain values, no torch, so the CLI can show and
check them without importing PyTorch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from radlake.training import TrainingError


@dataclass(frozen=True, slots=True)
class Augment:
    """Ranges of the random changes (0 turns one off)."""

    scale: float = 0.15
    aspect: float = 0.05
    translate: float = 0.08
    brightness: float = 0.1
    contrast: float = 0.25
    mirror: float = 0.5  # probability, where the classes allow it

    @classmethod
    def none(cls) -> Augment:
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Every setting of a run (recorded with the registered version)."""

    epochs: int = 150
    size: int = 256
    seed: int = 0
    batch_size: int = 16
    learning_rate: float = 2e-3
    weight_decay: float = 5e-4
    warmup_epochs: int = 3
    width: int = 16
    channels: int = 1
    centre_radius: float = 2.5
    ema_decay: float = 0.99
    eval_every: int = 5
    patience: int = 50  # epochs without a better validation mAP
    # One thread by default: the budget is CPU minutes (issue 10), and a second
    # thread on a busy machine mostly spins; the same count everywhere also keeps
    # a seed's model the same on any machine.
    threads: int = 1
    augment: Augment = field(default_factory=Augment)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise TrainingError(f"expected at least 1 epoch, got {self.epochs}")
        if self.size % 32 or not 64 <= self.size <= 1024:
            raise TrainingError(
                f"expected a size that is a multiple of 32 in 64..1024, got {self.size}"
            )
        if self.batch_size < 1 or self.threads < 1:
            raise TrainingError("expected a positive batch size and thread count")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
