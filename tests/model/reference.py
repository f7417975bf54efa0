"""An independent, deliberately plain reading of ARCHITECTURE §1-3 (docs/ARCHITECTURE.md) that
computes logits straight from an official-format config dict and state dict.

It shares no code with `parcae.model`: RoPE uses complex rotations from the official `freqs_cis`
layout, attention is an explicit masked softmax, the linear injection concatenates [h; e], and
every loop step runs every row. Tests anchor it to the official fixture, then use it as the
peer for configurations the fixture does not cover.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _rms(x, weight=None, eps=None):
    x32 = x.float()
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    y = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return y if weight is None else y * weight


def freqs_cis(head_dim: int, length: int, base: float) -> torch.Tensor:
    """(length, head_dim/2) complex rotations."""
    inv = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * inv[None]
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)


def _rope(x, rotations):  # x (B, S, H, hd)
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(pairs * rotations[None, :, None, :]).flatten(-2).type_as(x)


def _block(sd, prefix, x, cfg, rotations, ve):
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg["n_embd"] // heads
    batch, seq, _ = x.shape
    xn = _rms(x, sd[prefix + "norm_1.weight"], cfg["norm_eps"])
    q = (xn @ sd[prefix + "attn.c_q.weight"].T).view(batch, seq, heads, hd)
    k = (xn @ sd[prefix + "attn.c_k.weight"].T).view(batch, seq, kv_heads, hd)
    v = (xn @ sd[prefix + "attn.c_v.weight"].T).view(batch, seq, kv_heads, hd)
    if ve is not None:
        gate = 2 * torch.sigmoid(xn[..., :32] @ sd[prefix + "attn.ve_gate.weight"].T)
        v = v + gate[..., None] * ve.view(batch, seq, kv_heads, hd)
    q, k = _rope(q, rotations), _rope(k, rotations)
    if cfg["qk_norm"]:
        q, k = _rms(q), _rms(k)
    group = heads // kv_heads
    outs = []
    for head in range(heads):
        qh, kh, vh = q[:, :, head], k[:, :, head // group], v[:, :, head // group]
        scores = qh @ kh.transpose(1, 2) / math.sqrt(hd)
        mask = torch.ones(seq, seq, dtype=torch.bool).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
        outs.append(scores.softmax(-1) @ vh)
    x = x + torch.cat(outs, dim=-1) @ sd[prefix + "attn.c_proj.weight"].T
    xn = _rms(x, sd[prefix + "norm_2.weight"], cfg["norm_eps"])
    hidden = torch.relu(xn @ sd[prefix + "mlp.fc.weight"].T)
    return x + (hidden * hidden * 0.5) @ sd[prefix + "mlp.proj.weight"].T


def reference_logits(cfg: dict, sd: dict, input_ids: torch.Tensor, steps: int) -> torch.Tensor:
    """Official-semantics logits (B, S, V_pad) at `steps` loop iterations with a zero state."""
    seq = input_ids.shape[1]
    hd = cfg["n_embd"] // cfg["num_attention_heads"]
    rotations = freqs_cis(hd, seq, cfg["rope_settings"]["rope_base"])
    stages = [
        ("prelude", cfg["n_layers_in_prelude"]),
        ("core_block", cfg["n_layers_in_recurrent_block"]),
        ("coda", cfg["n_layers_in_coda"]),
    ]
    total = sum(n for _, n in stages)
    layer_of, index = {}, 0
    for stage, count in stages:
        for i in range(count):
            layer_of[(stage, i)] = index
            index += 1

    def ve_for(stage, i):
        layer = layer_of[(stage, i)]
        if layer % 2 != (total - 1) % 2:
            return None
        return F.embedding(input_ids, sd[f"value_embeds.{layer}.weight"])

    def run(stage, x):
        for i in range(dict(stages)[stage]):
            x = _block(sd, f"transformer.{stage}.{i}.", x, cfg, rotations, ve_for(stage, i))
        return x

    x = run("prelude", F.embedding(input_ids, sd["transformer.wte.weight"]))
    e = _rms(x, sd["transformer.ln_prelude.weight"], cfg["norm_eps"]) if cfg["prelude_norm"] else x
    h = torch.zeros_like(e)
    for _ in range(steps):
        kind = cfg["injection_type"]
        if kind == "diagonal":
            delta = F.softplus(sd["transformer.adapter.dt_bias"])
            a_bar = torch.exp(-delta * torch.exp(sd["transformer.adapter.A_log"]))
            h = a_bar * h + delta * (e @ sd["transformer.adapter.B"].T)
        elif kind == "linear":
            h = torch.cat([h, e], dim=-1) @ sd["transformer.adapter.adapter.weight"].T
        else:
            h = h + e
        h = run("core_block", h)
    y = run("coda", h @ sd["transformer.C.weight"].T)
    head = sd["lm_head.weight"]
    logits = (_rms(y, sd["transformer.ln_f.weight"], cfg["norm_eps"]) @ head.T).float()
    if cfg["logit_softcap"] is not None:
        logits = cfg["logit_softcap"] * torch.tanh(logits / cfg["logit_softcap"])
    return logits
