"""Training memory: what a forward saves for backward, the peak of a forward and backward on
the CPU, and an estimate of a training step's peak for any model size (on fake tensors).

With truncated backprop through depth a row runs n loop steps without gradient, which save
nothing, then k with gradient (`parcae.model.recurrence`). A training forward over N = B·S
tokens therefore saves (measured, benchmarks/train_memory.py, docs/PERFORMANCE.md)

    A(k) = A_0 + k · N · a_step                         bytes, whatever μ_rec = n + k
    a_step ≈ L_core · a_block + 4 d                      (the injection saves the fp32 state)

A_0: embeddings, prelude, coda, head and the float32 logits the loss keeps (N · V_pad · 4
bytes; `parcae.model.loss`).
a_block, per token and block: about 80 d bytes (20 d floats) in fp32 and 56 d bytes under bf16
autocast, where the residual stream, the norms and the rotary products stay fp32 (d = d_model,
ffn = 4d; flash attention: no S² term). Checkpointing each `Block` keeps only its fp32 input:
a_step ≈ (L_core + 1) · 4 d bytes. parcae-140m (d = 768, L_core = 2): a_step = 89 KB plain,
9.2 KB checkpointed (bf16 autocast), 1.36 and 0.14 GiB per gradient step at N = 8 · 2048.

A step's peak comes at the start of backward, when the gradient of the logits exists beside
every saved activation (the logits among them: the loss keeps them, and the caller's output
is the same tensor), or later, once the parameter gradients outweigh the loss's tensors. Both
stay below

    peak ≤ P + G + O + A(k) + N · V_pad · 4              (d logits)

with P, G the float32 parameters and gradients and O the optimizer state (`state_bytes`). G
is not yet allocated at the start of backward of a step's first micro-batch; at parcae-tiny
4 × 256 the measured peak of a forward and backward is A(k) + N · V_pad · 4 + 3.7 MiB (the
gradients flowing back through the coda).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from parcae.model import MODEL_CLASSES, DepthPlan
from parcae.model.config import TransformerConfig
from parcae.train.model import checkpoint_blocks
from parcae.train.optimizer import group_parameters

FLOAT32_BYTES = 4


def truncated_plan(batch_size: int, no_grad_steps: int, grad_steps: int) -> DepthPlan:
    """Every row runs `no_grad_steps` loop steps without gradient, then `grad_steps` with."""
    zeros = torch.zeros(batch_size, dtype=torch.long)
    return DepthPlan(zeros + no_grad_steps, zeros + grad_steps, zeros)


def _storage_id(tensor: Tensor) -> int:
    """The identity of the storage under `tensor` (its views share it). Not data_ptr, which
    is 0 for every fake tensor."""
    return tensor.untyped_storage()._cdata


class SavedActivations:
    """Within `with SavedActivations(model) as saved:`, records every distinct storage that
    autograd saves for backward, except `model`'s parameters and buffers; after the block
    `saved.bytes` is their total size. Storages are counted whole (a view saves its base) and
    once however many ops save them (a norm's output is saved by the q, k and v projections)."""

    def __init__(self, model: nn.Module) -> None:
        state = [*model.parameters(), *model.buffers()]
        self._excluded = {_storage_id(t) for t in state}
        self._storages: dict[int, torch.UntypedStorage] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self.bytes = 0

    def _pack(self, tensor: Tensor) -> Tensor:
        key = _storage_id(tensor)
        if key not in self._excluded:
            # held until the block ends, so that no storage id is reused while counting
            self._storages[key] = tensor.untyped_storage()
        return tensor

    def __enter__(self) -> SavedActivations:
        self._storages.clear()
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        self.bytes = sum(s.nbytes() for s in self._storages.values())
        self._storages.clear()


def saved_activation_bytes(
    model: nn.Module, inputs: Tensor, targets: Tensor, depth_plan: DepthPlan
) -> int:
    """Bytes of activations that one training forward of `model` on int64 (B, S) `inputs`
    and `targets` at `depth_plan`'s loop depths saves for backward (`SavedActivations`)."""
    with SavedActivations(model) as saved:
        model(inputs, targets, depth_plan=depth_plan)
    return saved.bytes


def peak_allocated_bytes(fn: Callable[[], object]) -> int:
    """The peak of live CPU memory allocated while `fn()` runs, above what was live before.

    Read from the profiler's allocation events (torch.profiler with profile_memory; each
    event carries the CPU allocator's running total). Only the CPU allocator is seen, and
    memory allocated before `fn` and freed within it is not subtracted (the profiler does not
    know its size), so `fn` should free only what it allocates."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = _walk(prof.profiler.kineto_results.experimental_event_tree())
    allocations = sorted(
        (e for e in events if e.tag == _EventType.Allocation), key=lambda e: e.start_time_ns
    )
    if not allocations:
        return 0
    first = allocations[0].extra_fields
    before = first.total_allocated - first.alloc_size  # the running total counts from startup
    return max(e.extra_fields.total_allocated for e in allocations) - before


def _walk(events):
    """Every event of the profiler's event tree, depth first."""
    for event in events:
        yield event
        yield from _walk(event.children)


@dataclass
class StepMemory:
    """One forward and backward: `saved`, bytes of activations saved for backward; `peak`,
    the peak of CPU memory allocated during both, above the model and inputs."""

    saved: int
    peak: int


def measure_step(
    model: nn.Module, inputs: Tensor, targets: Tensor, depth_plan: DepthPlan
) -> StepMemory:
    """Forward and backward of a training micro-batch as `parcae.train.step` runs it (the
    output held through backward), from no gradients; the gradients are cleared after."""
    model.zero_grad(set_to_none=True)
    saved = SavedActivations(model)

    def step() -> None:
        with saved:
            output = model(inputs, targets, depth_plan=depth_plan)
        output.loss.backward()

    peak = peak_allocated_bytes(step)
    model.zero_grad(set_to_none=True)
    return StepMemory(saved.bytes, peak)


@dataclass
class StateBytes:
    """Bytes of a model's float32 parameters, their gradients and the optimizer's state."""

    parameters: int
    gradients: int
    optimizer: int


def state_bytes(model: nn.Module, optimizer: str = "muon") -> StateBytes:
    """Parameters and gradients (each distinct parameter once), and the state of MuonAdamW
    (`parcae.train.muon`): AdamW keeps two moments of each parameter of its group (and a
    step count); Muon (`optimizer="muon"`) keeps, per (rows, cols) matrix, a momentum of the
    matrix's size and a second moment of max(rows, cols) floats. With `optimizer="adamw"`
    every parameter takes AdamW's two moments."""
    groups = group_parameters(model)
    params = [p for _, p in groups.adam + groups.matrix]
    weights = sum(p.numel() * p.element_size() for p in params)
    adam = [p for _, p in groups.adam]
    matrices = [p for _, p in groups.matrix]
    if optimizer == "adamw":
        adam, matrices = params, []
    state = sum(2 * p.numel() * p.element_size() + FLOAT32_BYTES for p in adam)
    state += sum(p.numel() * p.element_size() + max(p.shape) * FLOAT32_BYTES for p in matrices)
    return StateBytes(parameters=weights, gradients=weights, optimizer=state)


def loss_transient_bytes(tokens: int, padded_vocab_size: int) -> int:
    """What the loss adds at the start of backward beyond the saved activations (which hold
    its float32 logits): the gradient of the logits, (N, V_pad) float32."""
    return tokens * padded_vocab_size * FLOAT32_BYTES


@dataclass
class TrainingMemory:
    """An estimated training-step peak, by component (bytes; module docstring)."""

    parameters: int
    gradients: int
    optimizer: int
    activations: int
    loss: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.activations + self.loss


def fake_model(config: TransformerConfig) -> nn.Module:
    """The model of `config` on fake CPU tensors (shapes and dtypes, no memory), in training
    mode. Real tensors may be mixed in: the token ids and depth plans stay real, so the
    forward's checks and the loop schedule read their values."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        model = MODEL_CLASSES[config.architecture](config)
    return model.train()


def estimate_training_memory(
    config: TransformerConfig,
    batch_size: int,
    seq_len: int,
    depth_plan: DepthPlan,
    optimizer: str = "muon",
    bf16: bool = True,
    checkpointing: bool = False,
) -> TrainingMemory:
    """The peak of one training step of `config` on a (batch_size, seq_len) micro-batch at
    `depth_plan`'s depths, without allocating it: the saved activations are counted in one
    forward of a `fake_model` (under CPU bf16 autocast when `bf16`, which casts the same ops
    as CUDA's here: linear, matmul and attention; with each block checkpointed when
    `checkpointing`), the rest is computed from the shapes (module docstring)."""
    model = fake_model(config)
    if checkpointing:
        checkpoint_blocks(model)
    tokens = torch.zeros(batch_size, seq_len, dtype=torch.long)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        activations = saved_activation_bytes(model, tokens, tokens, depth_plan)
    state = state_bytes(model, optimizer)
    return TrainingMemory(
        parameters=state.parameters,
        gradients=state.gradients,
        optimizer=state.optimizer,
        activations=activations,
        loss=loss_transient_bytes(batch_size * seq_len, config.padded_vocab_size),
    )
