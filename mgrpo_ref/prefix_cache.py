"""Prefix caching: each conversation's keys and values kept from one turn to the next.

An agent's context only grows (docs/paper.md section 2): its prompt, its turn, what the
environment returned, its next turn, and so on. Handed the context as text, ``generate``
encodes all of it again for every turn, although writing the previous turn already computed
the keys and values of every token of it but the last one written. A :class:`PrefixCache`
keeps them, one entry per conversation, and :func:`generate` encodes only what is new: the
tokens of each context past its longest cached prefix. Serving engines call this prefix
caching (vLLM's automatic prefix caching, SGLang's radix attention); here it is a dictionary
of tensors and one loop.

Nothing the agent samples depends on it. A causal model's keys and values at a position
depend only on the tokens up to that position, so a kept prefix holds what encoding it again
would compute (equal up to float rounding: tested against ``generate`` on the same contexts).
Three rules keep it that way:

* a prefix is reused only as far as its token ids equal the new context's, token for token:
  text that tokenises differently once more text follows it is encoded again from the first
  token that differs;
* any change of the model's weights (an optimiser step, a loaded state dict) empties the
  cache: keys computed by other weights are other keys (:meth:`PrefixCache.check_weights`);
* the cache holds at most ``max_mib`` MiB of tensors and drops the least recently used entry
  first. A conversation that ended leaves its entry behind until then, or until the next update.

A call of :func:`generate` lays each context out as
``[padding | cached prefix | padding | new tokens]``: every row's cached prefix ends at column
C and its new tokens at column C + S, so one key-value tensor per layer holds every row's
prefix, and the attention mask hides the padding. Positions count the unmasked tokens only,
so each token sits at the position it has in its own context.

Each decode pass writes its token's keys and values into tensors that already have room for
the turn (:func:`with_room`), where transformers' own cache would copy every layer's keys and
values so far to append them. Rows that stopped leave the batch once they are half of it (their
entries kept first), so that the passes to come compute only the rows that had not stopped by
then; every row still draws its token at every pass, so its draws do not depend on when the
others stopped. The rows that go on are then computed in a smaller batch: the same turns up to
float rounding (tested).

Shapes: M contexts of one call; C the longest cached prefix reused and S the most new tokens
among them; T tokens of a conversation; J key-value heads of one layer and E the size of one.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

KeysValues = list[tuple[torch.Tensor, torch.Tensor]]
"""One (keys, values) pair per layer of the model, each (J, T, E) for one conversation
(or (M, J, T, E) for a batch)."""


@dataclass
class Entry:
    """What one conversation left after its last turn: the ids whose keys and values are
    kept (its context, then the turn it wrote but the last token), how many of them were the
    context, and the keys and values."""

    ids: torch.Tensor  # (T,)
    context_tokens: int
    kv: KeysValues  # per layer, (J, T, E) each

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.kv)


class PrefixCache:
    """Entries of the conversations an agent is in, for at most ``max_mib`` MiB."""

    def __init__(self, max_mib: float):
        if not max_mib > 0:
            raise ValueError(f"a prefix cache needs room: max_mib must be > 0, not {max_mib}")
        self.max_bytes = int(max_mib * 2**20)
        self.entries: list[Entry] = []  # least recently used first
        self._weights: tuple | None = None
        self.reused_tokens = self.encoded_tokens = self.evicted = self.shared_rows = 0
        """Running counts: context tokens taken from the cache, and encoded anew (once per row);
        entries dropped to stay within the budget; rows of a call whose context was another
        row's, and was encoded once for both (:func:`generate`)."""

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    def counts(self) -> dict[str, int]:
        """The running counts, by name: what a step's metrics report (worker.py) as the change
        over its rollouts."""
        return {"encoded_tokens": self.encoded_tokens, "reused_tokens": self.reused_tokens,
                "shared_rows": self.shared_rows, "evicted_entries": self.evicted}

    def check_weights(self, model: torch.nn.Module) -> None:
        """Empty the cache if any parameter changed since the last call. torch counts every
        in-place change of a tensor in its ``_version`` (an optimiser step, ``copy_`` and
        ``load_state_dict`` all write in place), so a changed count means changed weights."""
        weights = tuple((id(p), p._version) for p in model.parameters())
        if weights != self._weights:
            self.entries.clear()
            self._weights = weights

    def find(self, ids: list[torch.Tensor]) -> list[tuple[int, Entry | None]]:
        """For each context's ids, its longest cached prefix: (how many tokens, the entry
        holding them), (0, None) if none. Any entry serves, not only the context's own
        conversation: conversations of one role share at least their instruction. At least one
        token of each context is left to encode: its output predicts the turn's first token."""
        if not self.entries:
            return [(0, None)] * len(ids)
        longest = max(len(e.ids) for e in self.entries)
        table = torch.full((len(self.entries), longest), -1, dtype=torch.long)  # one row of ids per entry, -1 past its end
        for row, e in enumerate(self.entries):
            table[row, :len(e.ids)] = e.ids
        found = []
        for i in ids:
            n = min(len(i) - 1, longest)
            shared = (table[:, :n] == i[:n]).long().cumprod(dim=1).sum(dim=1)  # per entry: its leading tokens shared with i
            best = int(shared.argmax())
            found.append((int(shared[best]), self.entries[best]) if shared[best] > 0 else (0, None))
        return found

    def keep(self, new: list[Entry], used: list[tuple[int, Entry | None]]) -> None:
        """Store the entries a call wrote. An entry whose conversation went on (a row reused
        all of its context, and so is the same conversation one turn later) is replaced by the
        row's new entry; one that only lent a shared beginning stays, as recently used. Then
        the least recently used entries go while the cache is over its budget."""
        continued = {id(e) for n, e in used if e is not None and n >= e.context_tokens}
        lent = {id(e) for n, e in used if e is not None} - continued
        self.entries = ([e for e in self.entries if id(e) not in continued | lent]
                        + [e for e in self.entries if id(e) in lent] + new)
        size = self.nbytes
        while size > self.max_bytes and self.entries:
            size -= self.entries.pop(0).nbytes
            self.evicted += 1


# ---------------------------------------------------------------------------
# The model's side: a batch key-value cache from per-conversation tensors, and back


def cache_argument(module) -> str:
    """The name under which ``module``'s forward takes a key-value cache: ``cache`` from
    transformers 5.2x on, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def cache_of(output):
    """The key-value cache a forward pass returned, under either name."""
    return getattr(output, "cache", None) or getattr(output, "past_key_values", None)


def _forward_names(model) -> tuple[str, str | None]:
    """The names under which the model's forward takes a cache (``cache`` from transformers
    5.2x on, ``past_key_values`` before) and the number of positions to compute logits at
    (``logits_to_keep``, ``num_logits_to_keep`` before; None if neither)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = inspect.signature(inner.forward).parameters
    keep = next((n for n in ("logits_to_keep", "num_logits_to_keep") if n in names), None)
    return cache_argument(inner), keep


def as_model_cache(kv: KeysValues):
    """Per-layer (keys, values) as the model's own cache object."""
    from transformers import DynamicCache

    if hasattr(DynamicCache, "from_legacy_cache"):  # transformers 4.x
        return DynamicCache.from_legacy_cache(tuple(kv))
    return DynamicCache(ddp_cache_data=kv)


def from_model_cache(cache) -> KeysValues:
    """The model's cache object as per-layer (keys, values)."""
    if hasattr(cache, "layers"):  # transformers 5
        return [(layer.keys, layer.values) for layer in cache.layers]
    return [(cache.key_cache[i], cache.value_cache[i]) for i in range(len(cache.key_cache))]  # 4.x


def select_rows(cache, rows: torch.Tensor):
    """The model's cache with its batch taken from ``rows`` of it, each layer of its own kind
    (in place where the cache can select its rows itself): what :func:`with_room` hands on for
    a cache it cannot give room to, and the model's own concatenating cache it replaces."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(rows)  # each layer keeps its own kind and counters
        return cache
    return as_model_cache([(k[rows], v[rows]) for k, v in from_model_cache(cache)])


def with_room(cache, room: int, rows: torch.Tensor | None = None):
    """The model's cache with its batch taken from ``rows`` of it (all rows in order when
    None) and, where every layer is a plain ``DynamicLayer`` of transformers 5 (or one this
    function made), ``room`` more
    positions already allocated in each: a decode loop that writes one token a pass then
    writes it in place, where transformers' own layer concatenates, copying all of its keys
    and values so far at every pass. Holds the same numbers. Any other cache (a layer with a
    sliding window, say, or transformers 4.x) keeps its own layers, only its rows selected."""
    from transformers import DynamicCache

    layers = getattr(cache, "layers", None)
    plain = (_dynamic_layer(), _roomy_layer())  # transformers' own layer, or one of ours (rows selected again)
    if hasattr(DynamicCache, "from_legacy_cache") or not layers or any(type(layer) not in plain for layer in layers):
        return cache if rows is None else select_rows(cache, rows)
    kv = from_model_cache(cache)
    if rows is not None:
        kv = [(k[rows], v[rows]) for k, v in kv]
    roomy = DynamicCache()
    roomy.layers.extend(_roomy_layer()(k, v, room) for k, v in kv)
    return roomy


def _dynamic_layer():
    from transformers.cache_utils import DynamicLayer

    return DynamicLayer


@functools.cache
def _roomy_layer():
    """A ``DynamicLayer`` that keeps its keys and values as the front of larger tensors
    (made on first use, so that transformers is imported only when a cache is)."""

    class RoomyLayer(_dynamic_layer()):
        """One layer's keys and values, (M, J, T, E) each, as views of (M, J, T + room, E)
        tensors; ``update`` writes the new positions after them, and allocates anew (twice
        the size) only when the room runs out. After anything that replaced the keys (rows
        selected or reordered, moved to another device) it copies them into new room once;
        new states of another dtype, or an emptied layer, take ``DynamicLayer``'s own way."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int):
            super().__init__()
            self.lazy_initialization(keys, values)
            self._store(keys, values, room)

        def _store(self, keys: torch.Tensor, values: torch.Tensor, room: int) -> None:
            n = keys.shape[-2]
            self._k = keys.new_empty(*keys.shape[:-2], n + room, keys.shape[-1])
            self._v = values.new_empty(*values.shape[:-2], n + room, values.shape[-1])
            self._k[..., :n, :], self._v[..., :n, :] = keys, values
            self.keys, self.values = self._k[..., :n, :], self._v[..., :n, :]

        def _holds(self) -> bool:
            """Whether the keys and values are still views of the front of the room."""
            return (self._k is not None and self.keys._base is self._k and self.values._base is self._v
                    and self.keys.shape[:-2] == self._k.shape[:-2])

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if not self.is_initialized or self.keys.dtype != key_states.dtype:
                self._k = self._v = None
                return super().update(key_states, value_states, *args, **kwargs)
            n, s = self.keys.shape[-2], key_states.shape[-2]
            if not self._holds() or n + s > self._k.shape[-2]:
                self._store(self.keys, self.values, max(n + s, 2 * n) - n)
            self._k[..., n:n + s, :], self._v[..., n:n + s, :] = key_states, value_states
            self.keys, self.values = self._k[..., :n + s, :], self._v[..., :n + s, :]
            return self.keys, self.values

        def offload(self):
            super().offload()
            self._k = self._v = None  # the room stays on the device otherwise

        def reset(self) -> None:
            self._k = self._v = None
            super().reset()

    return RoomyLayer


def forward(model, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache,
            names: tuple[str, str | None] | None = None):
    """One pass over new tokens ``ids`` (M, S) after what the model's ``cache`` holds (C
    tokens, or None), with ``mask`` (M, C + S) over both and each new token's ``positions``
    (M, S): the logits of each row's last position (M, V), and the model's cache, which now
    holds all C + S positions. ``names``: :func:`_forward_names` of the model, when the
    caller has them already (a decode loop asks once, not at every pass)."""
    cache_name, keep_name = names or _forward_names(model)
    kwargs = {cache_name: cache}
    if keep_name is not None:
        kwargs[keep_name] = 1  # the output layer at the last position only: its logits are all a turn needs
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs)
    return out.logits[:, -1].float(), cache_of(out)


def batch_layout(reused: list[int], lengths: list[int]) -> tuple[int, int, torch.Tensor]:
    """Where each row's tokens go in ``[padding | cached prefix | padding | new tokens]``:
    (C, S, mask (M, C + S)) for rows that reuse ``reused[i]`` tokens of contexts of
    ``lengths[i]`` tokens."""
    c, s = max(reused), max(n - r for n, r in zip(lengths, reused))
    mask = torch.zeros(len(reused), c + s, dtype=torch.long)  # (M, C + S)
    for row, (r, n) in enumerate(zip(reused, lengths)):
        mask[row, c - r:c] = 1
        mask[row, c + s - (n - r):] = 1
    return c, s, mask


def positions_of(mask: torch.Tensor) -> torch.Tensor:
    """Each unmasked token's position in its own sequence (the count of unmasked tokens before
    it); padding gets 0, which nothing reads. (M, T) -> (M, T)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def stack_prefixes(found: list[tuple[int, Entry | None]], c: int) -> KeysValues:
    """Per layer, each row's reused prefix left-padded to C tokens: (M, J, C, E) each."""
    like = next(e for _, e in found if e is not None).kv  # any entry: the shapes of a row that reuses nothing
    out = []
    for layer, (k0, v0) in enumerate(like):
        keys, values = [], []
        for r, entry in found:
            k, v = (entry.kv[layer] if entry is not None else (k0, v0))
            keys.append(F.pad(k[:, :r], (0, 0, c - r, 0)))  # (J, C, E)
            values.append(F.pad(v[:, :r], (0, 0, c - r, 0)))
        out.append((torch.stack(keys), torch.stack(values)))
    return out


def row_of(kv: KeysValues, row: int, columns: torch.Tensor) -> KeysValues:
    """One row's keys and values at the given columns of a batch cache, copied out of it (so
    that keeping them does not keep the whole batch alive): per layer (J, T, E)."""
    return [(k[row][:, columns].clone(), v[row][:, columns].clone()) for k, v in kv]


def let_go(stopped: torch.Tensor) -> bool:
    """Whether the rows that stopped leave the batch now, given which of the rows it holds have
    stopped (H,): once they are half of them. Until then each pass feeds them padding; once
    they leave, every pass to come is cheaper, and copying the rows that go on into a smaller
    cache costs about one pass."""
    return bool(stopped.any()) and 2 * int(stopped.sum()) >= len(stopped)


def generate(model, cache: PrefixCache, contexts: list[list[int]], pick: Callable[[torch.Tensor], torch.Tensor],
             stopped: Callable[[torch.Tensor, int], torch.Tensor], max_new_tokens: int,
             pad_id: int) -> list[list[int]]:
    """One turn for each context (its token ids), encoding only what the cache does not hold.

    ``pick`` turns the last position's logits (M, V) into every row's next token (greedy or
    sampled: ``Policy.act`` decides); ``stopped(written, t)`` says which rows end their turn
    with the tokens written so far, ``written`` (M, t + 1). A row that stopped is fed padding,
    as in transformers' ``generate``, until the rows that stopped are half of those the batch
    holds (:func:`let_go`); then they leave it. Returns each row's new tokens, its stop
    included, and keeps in the cache each row's context and turn with the keys and values of
    all their tokens but the last.
    """
    device = next(model.parameters()).device
    cache.check_weights(model)
    ids = [torch.tensor(i, dtype=torch.long) for i in contexts]
    found = cache.find(ids)
    reused = [n for n, _ in found]
    cache.reused_tokens += sum(reused)
    cache.encoded_tokens += sum(len(i) for i in ids) - sum(reused)
    c, s, mask = batch_layout(reused, [len(i) for i in ids])
    new = torch.full((len(ids), s), pad_id, dtype=torch.long)  # (M, S)
    for row, (i, r) in enumerate(zip(ids, reused)):
        new[row, s - (len(i) - r):] = i[r:]
    # Rows with the same context and the same cached prefix (the K rollouts of a question at
    # their first turn) are encoded once: the first pass runs on one row of each kind, and its
    # logits and keys and values are copied to the others.
    kinds: dict[tuple, int] = {}  # (context, tokens reused, the entry they come from) -> its first row
    firsts = [kinds.setdefault((tuple(i.tolist()), r, id(e)), row) for row, (i, (r, e)) in enumerate(zip(ids, found))]
    first = torch.tensor(list(kinds.values()))  # one row of each kind
    slot = {row: u for u, row in enumerate(kinds.values())}
    kind = torch.tensor([slot[f] for f in firsts])  # (M,): each row's kind, a row of ``first``
    cache.shared_rows += len(ids) - len(first)
    past = (as_model_cache([(k.to(device), v.to(device)) for k, v in stack_prefixes([found[f] for f in first], c)])
            if c > 0 else None)
    position = positions_of(mask)  # (M, C + S)
    mask = mask.to(device)
    names = _forward_names(model)
    logits, past = forward(model, new[first].to(device), mask[first], position[first, c:].to(device), past, names)
    to = kind.to(device) if len(first) < len(ids) else None
    if to is not None:
        logits = logits[to]  # (M, V)
    past = with_room(past, max_new_tokens, to)  # every row of the batch; the turns' tokens are written in place
    position = position[:, -1:]  # (M, 1): the last token's
    written = torch.full((len(ids), max_new_tokens), pad_id, dtype=torch.long)  # (M, T): the turns' tokens
    lengths = torch.zeros(len(ids), dtype=torch.long)  # tokens written per row, its stop included
    done = torch.zeros(len(ids), dtype=torch.bool)
    held = torch.arange(len(ids))  # (H,): the rows the batch cache still holds, in its order
    entries: list[Entry | None] = [None] * len(ids)

    def keep_rows(kv: KeysValues, rows: list[int]) -> None:
        """The entries of ``rows`` (rows of the call) from ``kv``, the batch cache holding ``held``:
        each row's context and turn, with the keys and values of all their tokens but the last,
        which was never fed back. Their columns: its reused prefix, its new tokens, its turn."""
        slot = {row: h for h, row in enumerate(held.tolist())}
        for row in rows:
            i, r, n = ids[row], reused[row], int(lengths[row])
            columns = torch.cat([torch.arange(c - r, c), torch.arange(c + s - (len(i) - r), c + s),
                                 torch.arange(c + s, c + s + n - 1)]).to(device)
            entries[row] = Entry(torch.cat([i, written[row, :n - 1]]), len(i), row_of(kv, slot[row], columns))

    for t in range(max_new_tokens):
        token = pick(logits).cpu()  # (M,): every row draws, so a row's draws do not depend on the others' stops
        token[done] = pad_id
        written[:, t] = token
        lengths += (~done).long()
        done |= stopped(written[:, :t + 1], t)
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        finished = done[held]
        if let_go(finished):  # keep the stopped rows' entries, and compute only the others from here on
            keep_rows(from_model_cache(past), held[finished].tolist())
            stay = (~finished).nonzero().squeeze(1)
            past = with_room(past, max_new_tokens - t, stay.to(device))
            held = held[stay]
        mask = torch.cat([mask, torch.ones(len(ids), 1, dtype=mask.dtype, device=device)], dim=1)
        position = position + 1
        rows = held.to(device)
        out, past = forward(model, token[held][:, None].to(device), mask[rows], position[held].to(device), past, names)
        if len(held) < len(ids):  # a stopped row's token is padding whatever its logits: zeros
            logits = out.new_zeros(len(ids), out.shape[-1])
            logits[rows] = out
        else:
            logits = out
    keep_rows(from_model_cache(past), held.tolist())
    turns = [written[row, :int(lengths[row])].tolist() for row in range(len(ids))]
    cache.keep(entries, found)
    return turns
