"""Evaluation during training: validation loss and bits per byte at the eval depths
(`parcae.eval.loss`), and the loop diagnostics of the injection's linear part Ā:

    spectral_radius = ρ(Ā) = max |λ(Ā)|      (max(Ā) for the diagonal injection)
    transition_mean = mean(Ā)                (diagonal injection only)
"""

from __future__ import annotations

from torch import nn

from parcae.eval.loss import EvalResult, default_depths, evaluate
from parcae.model.injection import spectral_radius
from parcae.train import distributed as dist
from parcae.train.config import TrainConfig
from parcae.train.data import TrainData
from parcae.train.metrics import Metrics
from parcae.train.model import TrainModel


def loop_diagnostics(model: nn.Module) -> dict[str, float]:
    """ρ(Ā) (and mean(Ā) when diagonal) of a looped model's `transition()`; empty when its
    injection has no linear part (a collective under FSDP: call it on every rank)."""
    transition = model.transition()
    if transition is None:
        return {}
    transition = dist.full_tensor(transition)
    diagnostics = {"spectral_radius": spectral_radius(transition)}
    if transition.ndim == 1:
        diagnostics["transition_mean"] = float(transition.mean())
    return diagnostics


class Evaluator:
    """Evaluates the model on the validation split and logs the eval record.

    Config keys: eval_depths (a looped model's depths; default `default_depths`: 1, 2, 4 and
    μ_rec, a fixed-depth model its own). Every process runs it: the batches are split across
    processes and the sums all-reduced.
    """

    def __init__(
        self,
        config: TrainConfig,
        model: TrainModel,
        data: TrainData,
        info: dist.DistInfo,
        metrics: Metrics,
    ) -> None:
        self.model, self.data, self.info, self.metrics = model, data, info, metrics
        self.depths = (
            config.eval_depths
            if config.eval_depths and model.looped
            else default_depths(model.model)
        )

    def run(self, step: int, tokens: int, max_batches: int | None) -> list[EvalResult]:
        """Results at each depth over `max_batches` validation batches (all when None), logged
        as the eval record of `step` after `tokens` training tokens."""
        model = self.model
        results = evaluate(
            model.model,
            self.data.eval_batches(max_batches),
            self.data.token_bytes,
            self.depths,
            device=model.device,
            autocast=model.autocast(),
            rank=self.info.rank,
            world_size=self.info.world_size,
        )
        diagnostics = loop_diagnostics(model.model) if model.looped else {}
        self.metrics.log_eval(step, tokens, results, diagnostics)
        return results
