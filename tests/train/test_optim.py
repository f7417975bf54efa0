import torch

from parcae import create_model
from parcae.train.config import TrainConfig
from parcae.train.muon import orthogonalize
from parcae.train.optimizer import build_optimizer, group_parameters

from .conftest import TINY_MODEL


def test_orthogonalize_gives_singular_values_near_one():
    update = torch.randn(96, 32, generator=torch.Generator().manual_seed(0))
    singular = torch.linalg.svdvals(orthogonalize(update, dtype=torch.float32))
    assert singular.min() > 0.6 and singular.max() < 1.25


def test_groups_put_embeddings_injection_and_vectors_in_adam():
    model = create_model("parcae-tiny", **TINY_MODEL)
    groups = group_parameters(model)
    adam = {name for name, _ in groups.adam}
    matrix = {name for name, _ in groups.matrix}
    assert {
        "transformer.wte.weight",
        "transformer.adapter.A_log",
        "transformer.adapter.B",
        "transformer.C.weight",
    } <= adam
    assert all(p.dim() == 2 for _, p in groups.matrix)
    assert "transformer.core_block.0.attn.c_q.weight" in matrix
    assert len(adam) + len(matrix) == len({id(p) for p in model.parameters()})


def _losses_on_one_batch(optimizer_name: str, lr: float) -> list[float]:
    torch.manual_seed(0)
    model = create_model("parcae-tiny", vocab_size=128, **TINY_MODEL)
    config = TrainConfig(
        optimizer=optimizer_name,
        lr=lr,
        adam_lr=0.01,
        weight_decay=0.0,
        adam_betas=(0.8, 0.95),
        adam_eps=1e-10,
        muon_momentum=0.9,
        ns_steps=5,
    )
    optimizer = build_optimizer(model, config, torch.float32)
    ids = torch.randint(0, 128, (4, 33), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(15):
        loss = model(ids[:, :-1], ids[:, 1:], num_steps=2).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_muon_fits_a_repeated_batch():
    losses = _losses_on_one_batch("muon", 0.02)
    assert losses[-1] < 0.5 * losses[0]


def test_adamw_fits_a_repeated_batch():
    losses = _losses_on_one_batch("adamw", 0.003)
    assert losses[-1] < 0.7 * losses[0]
