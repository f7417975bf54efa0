"""The hand-written text of docs/REPRODUCTION.md: the protocols and the discussion. Numbers that
depend on the results are filled in from the report; the judgement in the discussion was written
after reading the stored results and says so where it rests on them."""

from __future__ import annotations

from parcae.reproduce import studies
from parcae.reproduce.records import FINAL_WINDOW, SPIKE_RATIO, SPIKE_WINDOW, STALL_MARGIN

INTRO = """# Reproducing Parcae's claims at small scale

The Parcae paper (Prairie et al., arXiv 2604.12946) makes four claims: looped training is
stable with its injection where earlier looped recipes diverge (S1), a looped model beats a
Transformer of the same parameters and data (S2), test-time depth follows a saturating law (S3),
and the optimal recurrence grows with compute (S4). This report tests each with the project's own
code on what this project always has: a 2-core CPU. No GPU was lent to the session that wrote it.

Everything below is regenerated from the stored results (`docs/results/reproduction/`) by

    parcae reproduce report          # a few seconds: tables, figures (docs/figures/), this file

and the experiments are re-run, resumably, by

    parcae reproduce run [--study S1|S2|S3|S4] [--quick]

which skips runs already recorded in the results (delete a study's table to run it again).
`--quick` is a smoke test of the plumbing, not of the science.

**Models.** Unless a study says otherwise, every run trains the "micro" models: the tiny presets
at {micro} (2+2+2 layers for Parcae and RDM, 6 layers for the parameter-matched GPT),
Shakespeare with the 4,096-token BPE tokenizer (1.45M training tokens, 48k validation tokens
from two held-out plays), 12 × 256-token batches, bf16 autocast (this CPU has AMX), one process.
Parcae and RDM train with μ_rec = 4 and backprop through ⌈μ_rec / 2⌉ = 2 loops; RDM is the
concatenation-injection recipe (`W [h; e]`, no norm after the prelude). Runs run one at a time:
on 2 cores two trainings only slow each other down."""

S1 = """**Protocol.** AdamW with one learning rate for every parameter (the paper's framing; not the
default Muon), weight decay 0.1, betas (0.8, 0.95), gradient clipping at 1.0, {s1_steps} steps
(0.46M tokens) with a 15-step warmup and a linear decay over the last half, seed 0, at the
learning rates {lrs} (1.5 decades). Validation loss, ρ(Ā) and the state norm at T = μ_rec are
measured every 25 steps on one validation batch; the final validation loss on 8 batches (32k
tokens).

**Definitions.** A *loss spike* is a step whose training loss exceeds the lowest loss of the
{spike_window} steps before it by more than {spike_percent}%. (The first definition left out the
warmup; the curves showed that every spike falls in the warmup, so it was widened, and the
counts are recomputed from the stored curves.) A run *diverged* when
its loss became non-finite (training stops) or when its final training loss (the mean of its last
{final_window} steps) is above its first step's loss. A run *stalled* when it did not diverge
but its final training loss stays within {stall_margin} nats of the unigram entropy of the
training split ({unigram} nats): it learned the token frequencies and nothing else. ρ(Ā) is
max(Ā) for Parcae's diagonal Ā and the largest eigenvalue modulus of W_h for RDM; the state
norm is the mean L2 norm of h_T over tokens.

Seed 0 at every rate, and seeds 1 and 2 at {seed_lrs}, where the three models part ways, so
that the differences claimed there rest on three seeds (S2's three seeds at lr 0.004 give the
noise near the best rate). The best learning rate, which
S2 and S3 train at, is the rate of the lowest seed-0 validation loss. After training, each
looped model's state is traced through depth to t = 2·μ_rec on 8 validation rows
(‖h_t‖ over t), and the last ratio ‖h_2μ‖ / ‖h_2μ−1‖ is reported: near 1 when the loop has
settled, near ρ(Ā) when it grows without bound."""

S2 = """**Protocol.** Parcae (μ_rec = 4) and GPT, each at its best S1 learning rate (AdamW),
{seeds} seeds each, trained for {s2_steps} steps (0.61M and 1.84M tokens: 0.4 and 1.3 epochs
of the training split; a 1,200-step budget was planned and cut for the session's CPU time).
Losses are on the validation split (8 × 16 × 256 tokens) at T = μ_rec for Parcae, which is
also reported at T = 1. Parcae spends more FLOPs per token than GPT (the recurrent block runs
μ_rec times, 2 of them with gradients), so the comparison is given at equal tokens and at equal
training FLOPs."""

S3 = """**Protocol.** `parcae eval` of S2's three {s3_steps}-step Parcae runs (μ_rec = 4) and of a
Parcae trained the same way with μ_rec = 8 (backprop through 4 loops, seed 0). Bits per byte on
the whole validation split at every T = 1..3·μ_rec (one forward at 3·μ_rec reads every depth),
with the depth law L(T) = L_inf + Z·exp(−z·T) fitted by least squares (as `parcae eval --fit`);
t95 is the depth at which 95% of the gain from T = 1 to L_inf is reached. The six BIG-bench
tasks of the CORE metric ({max_per_task} items per task; centered accuracy, 0 is chance) cost a
forward per depth, so they are scored for seed 0 only, at T = 1, 2, 4, 8, 12 (μ_rec = 4) and
1, 2, 4, 8, 16, 24 (μ_rec = 8)."""

S4 = """**Protocol.** `parcae sweep configs/sweeps/isoflop-tiny.yaml` then `parcae fit isoflop`:
parcae-tiny (width 192, 5.88M parameters; the default Muon optimizer at its default learning
rates), 3 FLOP budgets × μ_rec ∈ {{1, 2, 4, 8}}, backprop through ⌈μ_rec/2⌉ loops, seed 0, the
tokens set by the budget (D = C / F_train(μ_rec)), validation loss at T = μ_rec. Per budget a
parabola in log μ_rec gives μ*, and one in log D gives D*; power laws in C and 1,000 bootstrap
resamples give the exponents and their 95% intervals. One seed per point: S2's seed spread
(about ±0.01 nats) is far below the differences between the μ_rec here."""

DISCUSSION = """(the discussion is written once the results are in)"""


def prose(report) -> dict[str, str]:
    """The sections' text, with the protocol's settings filled in."""
    values = dict(
        micro=", ".join(f"{k} {v}" for k, v in studies.MICRO.items()),
        lrs=", ".join(f"{x:g}" for x in studies.S1_LRS),
        s1_steps=studies.S1_STEPS,
        s2_steps=" and ".join(str(s) for s in studies.S2_STEPS),
        seeds=len(studies.SEEDS),
        seed_lrs=" and ".join(f"{x:g}" for x in studies.S1_SEED_LRS),
        spike_window=SPIKE_WINDOW,
        spike_percent=round((SPIKE_RATIO - 1) * 100),
        final_window=FINAL_WINDOW,
        max_per_task=studies.S3_MAX_PER_TASK,
        s3_steps=studies.S3_STEPS,
        stall_margin=STALL_MARGIN,
        unigram="–" if report.unigram is None else f"{report.unigram:.2f}",
    )
    return {
        "intro": INTRO.format(**values),
        "S1": S1.format(**values),
        "S2": S2.format(**values),
        "S3": S3.format(**values),
        "S4": S4.format(**values),
        "discussion": DISCUSSION,
    }
