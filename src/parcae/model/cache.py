"""Attention sites: where a block's attention stores keys and values and what its queries read.

A block called with a site (`Block.forward(..., site=...)`) hands it the new q, k, v; the site
stores k, v and attends. Two kinds here (and the cache's fixed-shape mode for decode steps and
exported graphs, `parcae.model.decode.FixedShapeCache`):

- `KVCache` (inference): preallocated keys and values for every attention site of a forward:
  each prelude and coda layer (each GPT layer) one *slot*, each core layer one per loop step (the
  core's weights are shared across steps, its keys and values are not). A slot holds
  (B, Hkv, L_max, hd); a forward of S new tokens writes columns [length, length + S) of each
  slot it visits and attends over [0, length + S), so decoding costs O(length) attention.
- `LoopKV` (no cache, per-token depth): the latest keys and values of every token for each core
  layer, replaced out of place so that gradients flow (training with per-token depth).

In a loop step that computes only some tokens (`Active.tokens`), the others keep the keys and
values of their last step: `LoopKV` simply leaves them, and a cache slot first receives them from
the previous step's slot. The queries of the active tokens are placed in a grid of the rows that
hold them and attend causally there.

Cache sharing bounds the memory of the core: a `CacheSharing` maps loop step t of T to one of
fewer slots, and a step that reads a slot written by another step sees that step's keys for
earlier tokens (an approximation; `full` is exact):

- `full`: one slot per step (T slots per core layer);
- `ring:m`: slot t mod m (Huginn-style circular sharing; `ring:1` = one slot for all steps);
- `last:m`: steps T-m .. T-1 keep their own slots, every earlier step shares the first of them.

Columns are a shared timeline: with left padding, row b's real tokens start at its own column,
`valid` marks the columns that hold real tokens and `positions` their per-row positions (RoPE and
the eval-mode initial state use positions, so a padded row computes what it computes alone).
A cache is reusable: `reset()` empties it for a new request, `release(rows)` frees rows so new
sequences can start there (their old columns are hidden), `select_rows(index)` keeps or reorders
rows. For continuous batching (`parcae.serve`): `admit(row, source)` places a sequence prefilled
alone in another cache into one row while the other rows keep their state, and `compact()` moves
every row's real columns to the right end of a shorter timeline when it fills (a row's columns
keep their order, positions and keys, so what its later tokens compute does not change).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from parcae.errors import PromptError
from parcae.model.layers import CausalSelfAttention
from parcae.model.loop import Active

SHARING_KINDS = ("full", "ring", "last")


@dataclass(frozen=True)
class CacheSharing:
    """How the T loop steps of a core layer map to cache slots (see the module docstring)."""

    kind: str = "full"
    window: int = 0  # m for `ring` and `last`

    @classmethod
    def parse(cls, spec: str | CacheSharing | None) -> CacheSharing:
        """`full`, `ring:M`, `last:M` or `shared` (= `ring:1`)."""
        if spec is None:
            return cls()
        if isinstance(spec, CacheSharing):
            return spec
        name, _, window = str(spec).partition(":")
        if name == "shared" and not window:
            return cls("ring", 1)
        if name == "full" and not window:
            return cls()
        if name in ("ring", "last") and window.isdigit() and int(window) > 0:
            return cls(name, int(window))
        raise PromptError(
            f"unknown cache sharing {spec!r}; use full, shared, ring:M or last:M "
            f"(M a positive integer)"
        )

    def num_slots(self, num_steps: int) -> int:
        if self.kind == "full":
            return num_steps
        return min(self.window, num_steps)

    def slot(self, step: int, num_steps: int) -> int:
        """Slot of loop step `step` (0-based) among `num_slots(num_steps)`."""
        if self.kind == "full":
            return step
        if self.kind == "ring":
            return step % self.window
        return max(step - (num_steps - self.num_slots(num_steps)), 0)

    def __str__(self) -> str:
        return self.kind if self.kind == "full" else f"{self.kind}:{self.window}"


def new_positions(next_positions: Tensor, valid: Tensor) -> Tensor:
    """int64 (B, S): positions of S new columns (valid: bool (B, S), False at left padding)
    after rows whose next position is `next_positions` (B,); a padding column takes its row's
    last position (clamped at 0)."""
    return (next_positions[:, None] + valid.long().cumsum(dim=1) - 1).clamp_min(0)


def column_mask(valid: Tensor, columns: Tensor, queries: Tensor) -> Tensor:
    """bool (B, 1, S, L): a query at column queries[s] may attend to key column columns[j]
    when columns[j] <= queries[s] and it holds a real token (valid: bool (B, L)), and always
    to its own column (so a padding query is never empty). columns (L,), queries (S,)."""
    causal = columns[None, :] <= queries[:, None]
    own = columns[None, :] == queries[:, None]
    return (causal & (valid[:, None, :] | own))[:, None]


def initial_state(state_table: Tensor | None, positions: Tensor, like: Tensor) -> Tensor:
    """h_0 (B, S, d_r) of tokens at `positions` (B, S), dtype of `like`: rows of the eval-mode
    state table, or zeros (`zero` init) shaped like `like`."""
    if state_table is None:
        return torch.zeros_like(like)
    return state_table[positions].to(like.dtype)


@dataclass(frozen=True)
class CacheLayout:
    """Which slot each attention site of a forward owns: one per prelude layer, then each core
    layer's `core_slots` (layer-major, then loop step, through `sharing`), then one per coda
    layer. A GPT is all prelude (num_steps 0)."""

    prelude: range
    core: range
    coda: range
    num_steps: int
    sharing: CacheSharing

    @classmethod
    def of(cls, config, num_steps: int, sharing: str | CacheSharing | None = None) -> CacheLayout:
        looped = config.is_looped
        return cls(
            config.prelude_layers,
            config.core_layers,
            config.coda_layers,
            num_steps if looped else 0,
            CacheSharing.parse(sharing),
        )

    @property
    def core_slots(self) -> int:
        return self.sharing.num_slots(self.num_steps) if self.num_steps else 0

    @property
    def n_slots(self) -> int:
        return len(self.prelude) + len(self.core) * self.core_slots + len(self.coda)

    def slot(self, layer: int, step: int = 0) -> int:
        """Slot of distinct layer `layer` (a core layer: at loop step `step`)."""
        if layer in self.core:
            first = len(self.prelude) + (layer - self.core.start) * self.core_slots
            return first + self.sharing.slot(step, self.num_steps)
        if layer in self.coda:
            return len(self.prelude) + len(self.core) * self.core_slots + layer - self.coda.start
        return layer


def attend_tokens(
    attn: CausalSelfAttention,
    q: Tensor,
    keys: Tensor,
    values: Tensor,
    mask: Tensor | None,
    tokens: tuple[Tensor, Tensor],
    query_len: int,
) -> Tensor:
    """Attention of N scattered queries q (1, H, N, hd) at (rows, cols) = `tokens`, over the
    keys and values (B, Hkv, L, hd) of their rows -> heads (1, N, H*hd).

    The queries are placed at their columns in a (R, query_len) grid of the R rows holding them;
    mask (B, 1, query_len, L) bool, or None for causal with query_len == L."""
    rows, cols = tokens
    held, local = rows.unique(sorted=True, return_inverse=True)
    grid = q.new_zeros(len(held), query_len, *q.shape[1:2], q.shape[-1])
    grid = grid.index_put((local, cols), q[0].transpose(0, 1))  # (R, query_len, H, hd)
    heads = attn.mix(
        grid.transpose(1, 2), keys[held], values[held], None if mask is None else mask[held]
    )
    return heads[local, cols][None]


class LoopKV:
    """Latest keys and values (B, S, Hkv, hd) of every token for each core layer, for a
    per-token loop without a cache. Replaced out of place: gradients flow through them, and a
    token outside its gradient steps stores detached keys and values."""

    def __init__(self, batch: int, seq: int) -> None:
        self.shape = (batch, seq)
        self.keys: dict[int, Tensor] = {}
        self.values: dict[int, Tensor] = {}

    def site(self, layer: int, active: Active) -> _LoopKVSite:
        return _LoopKVSite(self, layer, active)


@dataclass
class _LoopKVSite:
    store: LoopKV
    layer: int
    active: Active

    def attend(self, attn: CausalSelfAttention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        store, active = self.store, self.active
        k = active.truncate(k.transpose(1, 2))  # (B, S, Hkv, hd) or (1, N, Hkv, hd)
        v = active.truncate(v.transpose(1, 2))
        if active.tokens is None:
            store.keys[self.layer], store.values[self.layer] = k, v
            return attn.mix(q, k.transpose(1, 2), v.transpose(1, 2))
        keys, values = store.keys.get(self.layer), store.values.get(self.layer)
        if keys is None:  # no token has run this layer yet
            keys = values = k.new_zeros(*store.shape, *k.shape[2:])
        keys = keys.index_put(active.tokens, k[0])
        values = values.index_put(active.tokens, v[0])
        store.keys[self.layer], store.values[self.layer] = keys, values
        return attend_tokens(
            attn,
            q,
            keys.transpose(1, 2),
            values.transpose(1, 2),
            None,
            active.tokens,
            keys.shape[1],
        )


class KVCache:
    """Keys and values of every attention site, for `batch` rows and up to `max_length` columns.

    keys, values: (n_slots, B, Hkv, L_max, hd); valid: bool (B, L_max); positions: int64
    (B, L_max); length: columns filled so far; num_steps: the loop depth T its core slots serve.
    state_table: the model's eval-mode initial state per position (context_length, d_r), or
    None (zero init, or a GPT): a cached forward starts each token's loop from its row.
    Build one with `model.new_cache(...)`.
    """

    def __init__(
        self,
        model,
        batch: int,
        max_length: int,
        num_steps: int = 0,
        sharing: str | CacheSharing | None = None,
        device=None,
        dtype=None,
    ) -> None:
        config = self.config = model.config
        parameter = next(model.parameters())
        device = parameter.device if device is None else device
        dtype = parameter.dtype if dtype is None else dtype
        self.layout = CacheLayout.of(config, num_steps, sharing)
        self.sharing, self.num_steps = self.layout.sharing, self.layout.num_steps
        self.core_layers, self.coda_layers = config.core_layers, config.coda_layers
        shape = (self.layout.n_slots, batch, config.n_kv_heads, max_length, config.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.valid = torch.zeros(batch, max_length, dtype=torch.bool, device=device)
        self.positions = torch.zeros(batch, max_length, dtype=torch.long, device=device)
        self.state_table = model.eval_state_table(device, dtype) if config.is_looped else None
        self.length = 0
        self.max_length = max_length
        self.new_columns = 0
        self.mask: Tensor | None = None

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    @property
    def batch_size(self) -> int:
        return self.valid.shape[0]

    # ------------------------------------------------------------ addressing

    def slot(self, layer: int, step: int = 0) -> int:
        """Slot of distinct layer `layer` (a core layer: at loop step `step`)."""
        return self.layout.slot(layer, step)

    def site(self, layer: int, active: Active | None = None) -> CacheSite:
        """The site of `layer` for the forward in progress; a core layer's at `active.step`."""
        if active is None or active.tokens is None:  # every token writes its own keys
            return CacheSite(self, self.slot(layer, 0 if active is None else active.step))
        step = active.step
        previous = self.slot(layer, step - 1) if step > 0 else None
        return CacheSite(self, self.slot(layer, step), previous, active)

    # ------------------------------------------------------------ a forward's columns

    def begin(self, valid: Tensor) -> Tensor:
        """Register the next S columns (valid: bool (B, S), False at left padding); returns
        their per-row positions, int64 (B, S). Sets `mask`, bool (B, 1, S, length + S): causal
        over columns, padding keys hidden, every query sees its own column (so a padding query
        is never empty)."""
        seq = valid.shape[1]
        start, end = self.length, self.length + seq
        if end > self.max_length:
            raise PromptError(
                f"the cache holds {self.max_length} tokens; cannot add {seq} to {self.length}"
            )
        positions = new_positions(self.next_positions(), valid)
        self.valid[:, start:end] = valid
        self.positions[:, start:end] = positions
        columns = torch.arange(end, device=valid.device)
        self.mask, self.new_columns = (
            column_mask(self.valid[:, :end], columns, columns[start:]),
            seq,
        )
        return positions

    def initial_state(self, positions: Tensor, like: Tensor) -> Tensor:
        """h_0 (B, S, d_r) of tokens at `positions` (B, S), as `like`: rows of `state_table`,
        or zeros."""
        return initial_state(self.state_table, positions, like)

    def fill_skipped_steps(self, steps_run: int) -> None:
        """After a loop that ended at step `steps_run` < T (every token exited), give the
        skipped steps' slots the last keys and values of the new columns."""
        for layer in self.core_layers:
            for step in range(max(steps_run, 1), self.num_steps):
                self._copy_columns(self.slot(layer, step - 1), self.slot(layer, step))

    def advance(self) -> None:
        """Commit the columns written by the forward that just ran."""
        self.length += self.new_columns
        self.new_columns, self.mask = 0, None

    def _copy_columns(self, source: int, target: int) -> None:
        if source != target:
            start, end = self.length, self.length + self.new_columns
            self.keys[target, :, :, start:end] = self.keys[source, :, :, start:end]
            self.values[target, :, :, start:end] = self.values[source, :, :, start:end]

    def next_positions(self) -> Tensor:
        """(B,) the position of each row's next token."""
        return self.valid[:, : self.length].sum(dim=1)

    # ------------------------------------------------------------ reuse

    def reserve(self, seq: int) -> None:
        """Make room for S more columns, doubling the capacity when it runs out (for callers
        that do not know the final length, such as transformers' `generate`)."""
        needed = self.length + seq
        if needed <= self.max_length:
            return
        pad = max(needed, 2 * self.max_length) - self.max_length
        self.keys = F.pad(self.keys, (0, 0, 0, pad))
        self.values = F.pad(self.values, (0, 0, 0, pad))
        self.valid = F.pad(self.valid, (0, pad))
        self.positions = F.pad(self.positions, (0, pad))
        self.max_length += pad

    def reset(self) -> None:
        """Forget every token (the memory stays allocated for the next request)."""
        self.length = 0
        self.valid.zero_()

    def release(self, rows: Tensor | list[int]) -> None:
        """Forget the tokens of `rows`: a new sequence can start there at position 0 on the
        next forward (the rows' old columns stay hidden from it)."""
        self.valid[torch.as_tensor(rows, dtype=torch.long, device=self.valid.device)] = False

    def compact(self, length: int | None = None) -> None:
        """Right-align every row's real columns to end at column `length` (default: the most
        real columns of any row), dropping padding and released columns: the timeline becomes
        that long. A row keeps its columns' order, keys, values and positions, so its later
        tokens attend to the same keys. Copies each row's columns once."""
        counts = self.valid[:, : self.length].sum(dim=1).tolist()
        length = max(counts, default=0) if length is None else length
        if not max(counts, default=0) <= length <= self.max_length:
            raise ValueError(
                f"cannot compact rows of up to {max(counts, default=0)} tokens into "
                f"{length} columns (capacity {self.max_length})"
            )
        for row, count in enumerate(counts):
            columns = self.valid[row, : self.length].nonzero().squeeze(1)
            target = slice(length - count, length)
            self.keys[:, row, :, target] = self.keys[:, row].index_select(2, columns)
            self.values[:, row, :, target] = self.values[:, row].index_select(2, columns)
            self.positions[row, target] = self.positions[row, columns]
            self.valid[row] = False
            self.valid[row, target] = True
        self.length = length

    def admit(self, row: int, source: KVCache, source_row: int = 0) -> None:
        """Put the sequence held in row `source_row` of `source` (a cache of the same model,
        typically a prompt prefilled alone) into row `row`, which must be free (`release`): its
        real columns become the last columns of this timeline (compacted first if it is
        shorter), with their positions. The other rows are untouched.

        A core slot of loop step t takes the source's slot of step min(t, T_source - 1): a
        source made for fewer steps than this cache gives the deeper steps its last step's keys
        and values, which is what a token frozen after T_source steps leaves in its slots."""
        columns = source.valid[source_row, : source.length].nonzero().squeeze(1)
        count = columns.numel()
        if count > self.length:
            counts = self.valid[:, : self.length].sum(dim=1)
            self.compact(max(count, int(counts.max()) if counts.numel() else 0))
        target = slice(self.length - count, self.length)
        pairs = [(self.slot(layer), source.slot(layer)) for layer in self.config.prelude_layers]
        for layer in self.core_layers:
            for step in range(self.num_steps):
                last = max(min(step, source.num_steps - 1), 0)
                pairs.append((self.slot(layer, step), source.slot(layer, last)))
        pairs += [(self.slot(layer), source.slot(layer)) for layer in self.coda_layers]
        for mine, theirs in pairs:
            self.keys[mine, row, :, target] = source.keys[theirs, source_row].index_select(
                1, columns
            )
            self.values[mine, row, :, target] = source.values[theirs, source_row].index_select(
                1, columns
            )
        self.valid[row] = False
        self.valid[row, target] = True
        self.positions[row, target] = source.positions[source_row, columns]

    def select_rows(self, index: Tensor | list[int]) -> None:
        """Keep rows `index` (int64, in that order): drop finished sequences or reorder."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.valid.device)
        self.keys, self.values = self.keys[:, index], self.values[:, index]
        self.valid, self.positions = self.valid[index], self.positions[index]


@dataclass
class CacheSite:
    """Slot `slot` of `cache` for the forward in progress; `previous` is the slot of the same
    core layer at the previous loop step (None outside the core or at step 0)."""

    cache: KVCache
    slot: int
    previous: int | None = None
    active: Active | None = None

    def attend(self, attn: CausalSelfAttention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        cache, slot = self.cache, self.slot
        start, end = cache.length, cache.length + cache.new_columns
        keys, values = cache.keys[slot, :, :, :end], cache.values[slot, :, :, :end]
        tokens = None if self.active is None else self.active.tokens
        if tokens is None:
            keys[:, :, start:] = k
            values[:, :, start:] = v
            return attn.mix(q, keys, values, cache.mask)
        if self.previous is not None:  # tokens that stopped keep their last keys and values
            cache._copy_columns(self.previous, slot)
        rows, cols = tokens
        keys[rows, :, start + cols] = k[0].transpose(0, 1)
        values[rows, :, start + cols] = v[0].transpose(0, 1)
        return attend_tokens(attn, q, keys, values, cache.mask, tokens, cache.new_columns)


def leading_rows(
    cache: KVCache,
    rows: int,
    num_steps: int | None = None,
    columns: int | None = None,
    first: int = 0,
) -> KVCache:
    """A cache over rows [0, rows) and columns [first, columns) of `cache` (default: all) that
    shares its memory: a forward over it writes there, and computes only those rows
    (continuous batching keeps its active rows packed at the front) and attends over only those
    columns (a decode step needs up to length + 1, from the first column any of the rows still
    holds: `first_live_column`). `num_steps` (full sharing only) runs a shallower loop over the
    same slots. The view keeps its own `length`, counted from `first`: copy it back after a
    forward (`cache.length = first + view.length`)."""
    view = object.__new__(KVCache)
    view.__dict__.update(cache.__dict__)
    end = cache.max_length if columns is None else columns
    view.keys = cache.keys[:, :rows, :, first:end]
    view.values = cache.values[:, :rows, :, first:end]
    view.valid, view.positions = cache.valid[:rows, first:end], cache.positions[:rows, first:end]
    view.max_length, view.length = end - first, cache.length - first
    if num_steps is not None:
        if cache.sharing.kind != "full" and num_steps != cache.num_steps:
            raise ValueError(f"a {cache.sharing} cache serves {cache.num_steps} loop steps only")
        view.num_steps = num_steps
    return view


def first_live_column(cache: KVCache, rows: int) -> int:
    """The first column that any of rows [0, rows) holds (`cache.length` if none): the columns
    before it are padding or released for all of them, so attention can skip them."""
    live = cache.valid[:rows, : cache.length].any(dim=0)
    return int(live.int().argmax()) if bool(live.any()) else cache.length


def move_row(cache: KVCache, source: int, target: int) -> None:
    """Move the sequence of row `source` to row `target` (its keys, values, positions and
    columns), leaving `source` free (`release`d)."""
    end = cache.length
    cache.keys[:, target, :, :end] = cache.keys[:, source, :, :end]
    cache.values[:, target, :, :end] = cache.values[:, source, :, :end]
    cache.valid[target] = cache.valid[source]
    cache.positions[target] = cache.positions[source]
    cache.release([source])
