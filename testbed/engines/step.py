"""The batched decoding hook: :class:`StepBatch`, the engine's tensors for rows that decode together.

Every engine decodes a batch through one object it returns from ``Engine._open_batch()``.  The
engine owns the tensors; whoever drives the batch (:class:`testbed.engines.stream.BatchStream`,
which the server's scheduler and the in-process paths use) owns time and order and takes every
timestamp.  Rows are named by integer *slots* the driver chooses.

* :meth:`StepBatch.admit` takes new rows: the encoder pass of a seq2seq model runs here (the
  driver stamps ``encoder_done`` when it returns, if :attr:`reports_encoder`); the rows then wait
  as *pending*.
* :meth:`StepBatch.prefill` gives every pending row its first token (seq2seq: the first decoder
  step over the new rows; decoder-only: the prompt) and joins them to the running rows.  With a
  ``budget`` (prompt tokens per call) a batch with ``chunked_prefill`` processes a long prompt in
  chunks, one per call, and returns the first tokens only with the last chunk (the driver runs a
  decoding step of the running rows between two chunks, so one long prompt cannot stall them);
  evicting a pending row stops its prefill.
* :meth:`StepBatch.step` runs one decoding step of every running row and returns each row's next
  token; :meth:`StepBatch.steps` may run several (until a row finishes) where nobody needs a
  timestamp per token.
* :meth:`StepBatch.evict` drops rows (finished, cancelled, past their deadline) at once; their
  slots are free for the next :meth:`admit`.

``join_running`` says whether :meth:`admit` may be called while rows are running (continuous,
iteration-level batching); an engine whose runtime cannot add a row to a running batch
(CTranslate2) sets it False and says why in ``join_refusal``.  Greedy decoding only; EOS is masked
for a row while ``Prepared.eos_allowed(generated)`` is False (min_tokens / ignore_eos), which the
batch tracks itself from the tokens it produced.

``padding`` counts, over every forward pass, the key/value positions computed or attended over
(``total``) and how many of them were padding (``padded``): what a padded batch wastes.

:class:`LockstepBatch` is the fallback for engines that declare they cannot batch
(``capabilities.batching == "lockstep"``): one ``_decode`` generator per row, advanced in turn.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from testbed.engines.base import Engine, Prepared

BATCHING_KINDS = ("continuous", "static", "lockstep")
"""What an engine's batched decoding is: ``continuous`` (rows join and leave between steps),
``static`` (a real batched forward, but rows cannot join a running batch), ``lockstep`` (no batched
forward: single-row decodes advanced in turn)."""


@dataclass
class Padding:
    """Key/value positions of the forward passes so far: all of them, and the padded ones."""

    total: int = 0
    padded: int = 0

    def add(self, total: int, padded: int) -> None:
        self.total += int(total)
        self.padded += int(padded)

    @property
    def fraction(self) -> float | None:
        return self.padded / self.total if self.total else None


class StepBatch(ABC):
    """Rows decoding together (see the module docstring for the protocol)."""

    reports_encoder: bool = False
    join_running: bool = True
    join_refusal: str = ""
    chunked_prefill: bool = False  # prefill(budget) processes a prompt in chunks

    def __init__(self) -> None:
        self.prepared: dict[int, Prepared] = {}
        self.generated: dict[int, int] = {}
        self.padding = Padding()

    # ------------------------------------------------------------------ driver API
    @property
    def slots(self) -> list[int]:
        return list(self.prepared)

    def admit(self, rows: Mapping[int, Prepared]) -> None:
        if not rows:
            return
        taken = [s for s in rows if s in self.prepared]
        if taken:
            raise ValueError(f"slots {taken} are already in the batch")
        if self.prepared and self.has_running() and not self.join_running:
            raise RuntimeError(f"this engine cannot add rows to a running batch: {self.join_refusal}")
        for s, p in rows.items():
            self.prepared[s] = p
            self.generated[s] = 0
        self._admit(dict(rows))

    def prefill(self, budget: int | None = None) -> dict[int, int]:
        """First tokens of the pending rows (all of them, or, with ``budget`` prompt tokens on a batch
        with ``chunked_prefill``, none until their last chunk)."""
        out = self._prefill_chunk(budget) if budget is not None and self.chunked_prefill else self._prefill()
        self._count(out)
        return out

    def _prefill_chunk(self, budget: int) -> dict[int, int]:
        return self._prefill()

    def step(self) -> dict[int, int]:
        out = self._step() if self.has_running() else {}
        self._count(out)
        return out

    def steps(self) -> dict[int, list[int]]:
        """One or more decoding steps of the running rows, for a driver that takes no timestamp per token
        (:meth:`Engine.generate`): each row's new tokens, up to and including the one that finishes it
        (an EOS id, or its ``max_new_tokens``); the driver evicts finished rows as after :meth:`step`.
        One step unless the engine runs several in one call (ONNX Runtime's greedy loop); it returns
        once a row has finished, at the latest."""
        out = self._steps() if self.has_running() else {}
        for s, toks in out.items():
            self.generated[s] += len(toks)
        return out

    def _steps(self) -> dict[int, list[int]]:
        return {s: [t] for s, t in self._step().items()}

    def evict(self, slots: Iterable[int]) -> None:
        gone = [s for s in slots if s in self.prepared]
        if not gone:
            return
        self._evict(gone)
        for s in gone:
            del self.prepared[s]
            del self.generated[s]

    def close(self) -> None:
        self.evict(list(self.prepared))

    def is_pending(self, slot: int) -> bool:
        """Is the row admitted but without its first token yet (a prefill still in progress)?"""
        return False

    def no_eos(self, slots: Iterable[int | None]) -> list[int]:
        """Positions (in ``slots`` order; None: a finished row still in the tensors) of the rows that may
        not choose EOS at their next token."""
        return [i for i, s in enumerate(slots) if s is not None and not self.prepared[s].eos_allowed(self.generated[s])]

    def _count(self, out: Mapping[int, int]) -> None:
        for s in out:
            self.generated[s] += 1

    # ------------------------------------------------------------------ engine hooks
    @abstractmethod
    def has_pending(self) -> bool: ...

    @abstractmethod
    def has_running(self) -> bool: ...

    @abstractmethod
    def _admit(self, rows: dict[int, Prepared]) -> None: ...

    @abstractmethod
    def _prefill(self) -> dict[int, int]: ...

    @abstractmethod
    def _step(self) -> dict[int, int]: ...

    @abstractmethod
    def _evict(self, slots: list[int]) -> None: ...


class PaddedBatch(StepBatch):
    """The bookkeeping of an engine whose rows are padded tensors (torch, ONNX Runtime).

    ``order``: the slot of each tensor row, None for a row that left and stays in the tensors until
    the next compaction (copying every cache at each departure cost about one decoding step);
    ``waiting``: seq2seq rows admitted (encoder run) and not yet prefilled; ``pfs``: decoder-only
    prefills in progress, one group (``{"slots": [...], ...}``) per admission, advanced chunk by chunk.
    """

    encode_waste = 0.1  # seq2seq: the most padding a group of sources is encoded with (length_groups)

    def __init__(self, seq2seq: bool) -> None:
        super().__init__()
        self.seq2seq = seq2seq
        self.reports_encoder = seq2seq
        self.chunked_prefill = not seq2seq
        self.order: list[int | None] = []
        self.waiting: list[int] = []
        self.pfs: list[dict[str, Any]] = []

    def has_pending(self) -> bool:
        return bool(self.waiting) or bool(self.pfs)

    def _encode_groups(self, slots: list[int], encode: Callable[[list[int]], tuple[Any, Any]]) -> list[Any]:
        """Seq2seq admission: ``encode`` (slots -> (the encoder's outputs, their attention mask)) run over
        groups of similar length (:func:`length_groups`), the padding counted; the rows wait in the groups'
        order, and each group's outputs come back in it (the engine pads them to one width)."""
        groups = length_groups([len(self.prepared[s].input_ids) for s in slots], self.encode_waste)
        outs = []
        for g in groups:
            out, mask = encode([slots[i] for i in g])
            outs.append(out)
            self.padding.add(mask.shape[0] * mask.shape[1], int((mask == 0).sum()))
        self.waiting = [slots[i] for g in groups for i in g]
        return outs

    def is_pending(self, slot: int) -> bool:
        return slot in self.waiting or any(slot in g["slots"] for g in self.pfs)

    def has_running(self) -> bool:
        return len(self.order) > self.order.count(None)

    def _zombies(self) -> int:
        return self.order.count(None)


class LockstepBatch(StepBatch):
    """No batched forward: each row's ``_decode`` generator, advanced one token per step."""

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine
        self.gens: dict[int, Generator[object, None, None]] = {}
        self.first: dict[int, int | None] = {}  # pending rows: their first token if _decode gave it early
        self.running: list[int] = []
        self.reports_encoder = False  # set by _admit: True when the rows' _decode reported their encoder pass

    def has_pending(self) -> bool:
        return bool(self.first)

    def is_pending(self, slot: int) -> bool:
        return slot in self.first

    def has_running(self) -> bool:
        return bool(self.running)

    def _next(self, s: int) -> int | None:
        from testbed.engines.base import ENCODER_DONE

        g = self.gens.get(s)
        if g is None:
            return None
        try:
            item = next(g)
            while item is ENCODER_DONE:
                item = next(g)
            return int(item)  # type: ignore[call-overload]
        except StopIteration:
            self.gens.pop(s, None)
            return None

    def _admit(self, rows: dict[int, Prepared]) -> None:
        from testbed.engines.base import ENCODER_DONE

        for s, p in rows.items():
            g = self.engine._decode(p)
            self.gens[s] = g
            try:
                item = next(g)  # the encoder pass (seq2seq) or, for an engine that reports none, a token
            except StopIteration:
                self.gens.pop(s)
                self.first[s] = None
                continue
            self.first[s] = None if item is ENCODER_DONE else int(item)  # type: ignore[call-overload]
        self.reports_encoder = bool(rows) and all(self.first[s] is None and s in self.gens for s in rows)

    def _prefill(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for s, tok in list(self.first.items()):
            t = tok if tok is not None else self._next(s)
            if t is not None:
                out[s] = t
            self.running.append(s)
        self.first.clear()
        return out

    def _step(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for s in self.running:
            t = self._next(s)
            if t is not None:
                out[s] = t
        return out

    def _evict(self, slots: list[int]) -> None:
        for s in slots:
            g = self.gens.pop(s, None)
            if g is not None:
                g.close()
            self.first.pop(s, None)
            if s in self.running:
                self.running.remove(s)


def length_groups(lengths: Sequence[int], max_waste: float = 0.1) -> list[list[int]]:
    """Indices of ``lengths`` in groups to be padded together: sorted by length, a group grows while at
    most ``max_waste`` of its padded positions are padding.  An encoder pass over a batch padded to its
    longest source spends the padding's share on nothing: on Marian int8, 32 test sentences at a time,
    the padding share fell from 56% to 6% and the encoder's time to 0.52 of the one padded pass
    (``bench/results/ort_cpu_paths.md``)."""
    out: list[list[int]] = []
    cur: list[int] = []
    real = 0
    for i in sorted(range(len(lengths)), key=lambda j: (lengths[j], j)):
        n = lengths[i]  # the longest so far: sorted ascending
        if cur and (n * (len(cur) + 1) - (real + n)) > max_waste * n * (len(cur) + 1):
            out.append(cur)
            cur, real = [], 0
        cur.append(i)
        real += n
    if cur:
        out.append(cur)
    return out


def _pad(arr: Any, width: int, axis: int, value: float, left: bool) -> Any:
    n = arr.shape[axis]
    if n >= width:
        return arr
    shape = list(arr.shape)
    shape[axis] = width - n
    if hasattr(arr, "new_full"):  # torch
        import torch

        fill = arr.new_full(shape, value)
        return torch.cat([fill, arr] if left else [arr, fill], dim=axis)
    import numpy as np

    fill = np.full(shape, value, dtype=arr.dtype)
    return np.concatenate([fill, arr] if left else [arr, fill], axis=axis)


def pad_left(arr: Any, width: int, axis: int, value: float = 0.0) -> Any:
    """``arr`` (numpy or torch) padded on the left of ``axis`` to ``width`` with ``value``."""
    return _pad(arr, width, axis, value, left=True)


def pad_right(arr: Any, width: int, axis: int, value: float = 0.0) -> Any:
    """``arr`` (numpy or torch) padded on the right of ``axis`` to ``width`` with ``value``."""
    return _pad(arr, width, axis, value, left=False)
