"""MuonAdamW (ARCHITECTURE §4): Muon for matrices, AdamW for the rest, in one optimizer.

Muon step for a matrix W (rows × cols) with gradient G:

    M  = lerp(M, G, 1 - μ);  U = lerp(G, M, μ)                 Nesterov momentum
    O  = PolarExpress(U)                                        ≈ U (UᵀU)^-½, 5 steps
    v  = lerp(v, mean(O², reduced dim), 1 - β₂)                 per-row/column 2nd moment
    O' = O · v^-½ · ‖O‖/‖O · v^-½‖                              (norm preserved)
    W -= lr·√max(1, rows/cols) · (O' + wd · W · [O'·W ≥ 0])     cautious weight decay

The orthogonalisation runs in the training precision: bf16 when training in bf16 (the recipe),
fp32 when training in fp32 (so an fp32 run is reproducible across batch layouts). Under FSDP
the parameters, gradients and momenta are DTensors sharded by rows; Muon gathers each whole
update U, orthogonalises it on every rank and keeps the rows of its own shard (the
per-row/column second moment is kept whole on every rank). AdamW is elementwise and runs on the
shards.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor, distribute_tensor

from parcae.train.distributed import full_tensor

# Polar Express (Amsel et al. 2025) coefficients of the 5 odd degree-5 polynomials; the first
# steps are aggressive, the last ones converge the singular values to 1.
POLAR_EXPRESS_COEFFICIENTS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
SECOND_MOMENT_BETA = 0.95


def orthogonalize(update: Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """Polar Express: the nearest semi-orthogonal matrix to `update` (rows, cols), or to each
    matrix of a batch (batch, rows, cols), in `dtype`.

    Each step applies X <- aX + b(XXᵀ)X + c(XXᵀ)²X (on the Gram matrix of the smaller side).
    """
    x = update.to(dtype)
    norm = torch.linalg.matrix_norm(x, keepdim=True)  # Frobenius, per matrix
    x = x / (norm * 1.02 + 1e-6)  # singular values in [0, 1) with a safety margin
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.mT
    squeeze = x.dim() == 2
    if squeeze:
        x = x.unsqueeze(0)
    for a, b, c in POLAR_EXPRESS_COEFFICIENTS[:steps]:
        gram = x @ x.mT
        polynomial = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b·G + c·G²
        x = torch.baddbmm(x, polynomial, x, beta=a)  # a·X + (b·G + c·G²)·X
    if squeeze:
        x = x.squeeze(0)
    return (x.mT if tall else x).to(update.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """Muon for the groups with `kind="muon"`, AdamW for those with `kind="adamw"`.

    Group options: lr, weight_decay; Muon: momentum, ns_steps, ns_dtype (a torch dtype's name,
    "float32" or "bfloat16", so that state dicts hold only plain values); AdamW: betas, eps.
    The training loop changes lr, weight_decay and momentum between steps (the schedule); each
    group's `initial_lr` is its peak learning rate.
    """

    def __init__(self, groups: list[dict]) -> None:
        defaults = dict(
            lr=1e-3,
            weight_decay=0.0,
            momentum=0.95,
            ns_steps=5,
            ns_dtype="float32",
            betas=(0.8, 0.95),
            eps=1e-10,
        )
        for group in groups:
            group.setdefault("initial_lr", group["lr"])
            group.setdefault("initial_weight_decay", group.get("weight_decay", 0.0))
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if group["kind"] == "muon":
                self._muon(group)
            else:
                self._adamw(group)

    def _muon(self, group: dict) -> None:
        """Nesterov updates, orthogonalised together for the matrices of one shape (one
        batched Newton-Schulz per shape, not one per matrix), then applied one by one."""
        params = [p for p in group["params"] if p.grad is not None]
        for shape in dict.fromkeys(p.shape for p in params):
            same = [p for p in params if p.shape == shape]
            updates = torch.stack([self._nesterov(p, group["momentum"]) for p in same])
            ns_dtype = getattr(torch, group["ns_dtype"])
            updates = orthogonalize(updates, group["ns_steps"], ns_dtype).float()
            for param, update in zip(same, updates.unbind(0), strict=True):
                self._apply_muon(param, update, group["lr"], group["weight_decay"])

    def _nesterov(self, param: Tensor, momentum: float) -> Tensor:
        """M = lerp(M, G, 1 - μ), returns the whole U = lerp(G, M, μ) (all-gathered under
        FSDP)."""
        grad, state = param.grad, self.state[param]
        if not state:
            rows, cols = param.shape
            state["momentum"] = torch.zeros_like(param)
            reduced = (rows, 1) if rows >= cols else (1, cols)
            state["second_moment"] = torch.zeros(reduced, dtype=torch.float32, device=param.device)
        buffer = state["momentum"]
        buffer.lerp_(grad, 1 - momentum)
        return full_tensor(grad.lerp(buffer, momentum))

    def _apply_muon(self, param: Tensor, update: Tensor, lr: float, wd: float) -> None:
        """W -= lr·√max(1, rows/cols)·(O' + wd·W·[O'·W ≥ 0]) for the orthogonalised update O
        (whole, float32) normalised by its second moment into O'."""
        rows, cols = param.shape
        update = _normalise_second_moment(update, self.state[param]["second_moment"], rows >= cols)
        scaled_lr = lr * max(1.0, rows / cols) ** 0.5
        update = _shard_like(update.to(param.dtype), param)
        if wd > 0:
            mask = (update * param) >= 0
            param.sub_(param * mask, alpha=scaled_lr * wd)
        param.sub_(update, alpha=scaled_lr)

    def _adamw(self, group: dict) -> None:
        beta1, beta2 = group["betas"]
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        for param in group["params"]:
            if param.grad is None:
                continue
            grad, state = param.grad, self.state[param]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(param)
                state["exp_avg_sq"] = torch.zeros_like(param)
            state["step"] += 1
            step = float(state["step"])
            state["exp_avg"].lerp_(grad, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denominator = (state["exp_avg_sq"] / (1 - beta2**step)).sqrt_().add_(eps)
            if wd > 0:
                param.mul_(1 - lr * wd)
            param.addcdiv_(state["exp_avg"], denominator, value=-lr / (1 - beta1**step))


def _shard_like(whole: Tensor, param: Tensor) -> Tensor:
    """`whole` split like `param`: this rank's shard when `param` is a DTensor (no
    communication: every rank holds the same `whole`)."""
    if not isinstance(param, DTensor):
        return whole
    return distribute_tensor(whole, param.device_mesh, param.placements, src_data_rank=None)


def _normalise_second_moment(update: Tensor, second_moment: Tensor, per_row: bool) -> Tensor:
    """Divide each row (or column) by the root of its running mean square, keeping ‖update‖."""
    dim = -1 if per_row else -2
    mean_square = update.square().mean(dim=dim, keepdim=True)
    second_moment.lerp_(mean_square, 1 - SECOND_MOMENT_BETA)
    scale = second_moment.clamp_min(1e-10).rsqrt()
    scaled = update * scale
    return scaled * (update.norm() / scaled.norm().clamp_min(1e-10))
