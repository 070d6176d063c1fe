"""Knowledge distillation as a trainer hook (Hinton et al. 2015).

``L = (1 - alpha) * CE(y, s) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))`` with a frozen
teacher t. Used by BAR (T = 4, alpha = 0.9, B6) and optionally by LZR in BAR's setting (L1). The
soft target is counted once (the unofficial BAR re-implementation adds a soft CE *and* the KL term).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .trainer import Hook


class Distillation(Hook):
    def __init__(self, teacher: torch.nn.Module, temperature: float = 4.0, alpha: float = 0.9):
        if temperature <= 0 or not 0 <= alpha <= 1:
            raise ValueError("distillation needs temperature > 0 and alpha in [0, 1]")
        self.teacher = teacher
        self.T, self.alpha = float(temperature), float(alpha)

    def setup(self, trainer):
        self.teacher.to(trainer.device, memory_format=trainer.memory_format).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def loss_terms(self, trainer, batch):
        with torch.no_grad():
            t = self.teacher(batch.x).float()
        s = batch.logits.float()
        kl = F.kl_div(F.log_softmax(s / self.T, 1), F.log_softmax(t / self.T, 1), reduction="batchmean",
                      log_target=True)
        return {"ce": (1 - self.alpha) * batch.ce_per_sample.mean(), "kd": self.alpha * self.T ** 2 * kl}
