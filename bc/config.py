"""Configuration of behaviour-cloning training and evaluation (the `bc` section of the run config)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from q2rl.config import ConfigError, check_numbers, doc
from q2rl.core.policies import PolicyConfig

ActionMode = Literal["sample", "mode"]  # how a BC policy acts: sample its distribution, or take its mode


@dataclasses.dataclass(frozen=True)
class BCConfig:
    """Behaviour cloning: minibatch negative log-likelihood of demonstrated actions with Adam."""

    policy: PolicyConfig = doc(PolicyConfig(), "Policy network architecture.")
    steps: int = doc(4000, "Gradient steps.")
    batch_size: int = doc(256, "Minibatch size (state-action pairs).")
    learning_rate: float = doc(1e-3, "Adam learning rate (cosine-decayed to 10% over the run).")
    weight_decay: float = doc(0.0, "Decoupled weight decay (AdamW) when > 0.")
    state_noise_std: float = doc(0.0, "Gaussian noise added to the normalised state in training (0 disables).")
    keep_best: bool = doc(False, "Keep the parameters with the lowest validation NLL (early stopping).")
    grad_clip_norm: float = doc(1.0, "Clip the global gradient norm to this (0 disables).")
    val_fraction: float = doc(0.1, "Fraction of demo episodes held out for the validation NLL.")
    eval_every: int = doc(500, "Compute the validation NLL every this many steps.")
    successes_only: bool = doc(True, "Train only on demos whose episode succeeded.")
    max_demos: int = doc(0, "Use only the first N demos of the file (0 = all).")
    cameras: tuple[str, ...] = doc((), "Cameras of the demo file the policy sees (empty = state only).")
    image_shift_pad: int = doc(4, "Random-shift augmentation padding in pixels for images (0 disables).")
    seed: int = doc(0, "Seed for initialisation, the validation split and minibatch sampling.")
    eval_action: ActionMode = doc("sample", "How `bc eval` picks actions from the policy.")

    def validate(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps: must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: must be >= 1, got {self.batch_size}")
        check_numbers(self, "> 0", "learning_rate")
        check_numbers(self, ">= 0", "grad_clip_norm", "seed")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction: must be in [0, 1), got {self.val_fraction}")
        if self.eval_every < 1:
            raise ConfigError(f"eval_every: must be >= 1, got {self.eval_every}")
        if self.image_shift_pad < 0:
            raise ConfigError(f"image_shift_pad: must be >= 0, got {self.image_shift_pad}")
        check_numbers(self, ">= 0", "weight_decay", "state_noise_std")
        if self.max_demos < 0:
            raise ConfigError(f"max_demos: must be >= 0 (0 = all), got {self.max_demos}")
