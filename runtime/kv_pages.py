"""A page-exact model of the bookkeeping inside TVM's paged KV cache.

TVM allocates KV pages inside ``kv_state_begin_forward`` and aborts the process if none are
left, so the scheduler must know beforehand exactly how many pages an operation will take. This
module replays the cache's rules (``src/runtime/vm/paged_kv_cache.cc``) on page ids alone:

- sequences own a chain of blocks; blocks hold pages and may be shared (reference counted);
- appending fills the last block's last page, then takes fresh pages; only an unshared last
  block accepts tokens;
- forking at position p shares the full pages before p (moved into a common parent block) and,
  if p is mid-page, copies that partial page into one new page for the child;
- popping n tokens frees trailing pages; removing a sequence frees every block no other
  sequence still references.

``tests/test_kv_pages.py`` runs random operation sequences against the real cache and checks
that free-page counts agree after every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class OutOfPages(RuntimeError):
    """More pages requested than are free (the scheduler must never let this happen)."""


@dataclass
class _Block:
    pages: list[int] = field(default_factory=list)
    length: int = 0
    start: int = 0
    parent: int = -1
    refs: int = 1


@dataclass
class _Seq:
    last_block: int
    length: int = 0


class PagedKVModel:
    def __init__(self, total_pages: int, page_size: int):
        self.total_pages = total_pages
        self.page_size = page_size
        self._free_pages = list(range(total_pages - 1, -1, -1))
        self._blocks: dict[int, _Block] = {}
        self._next_block = 0
        self._seqs: dict[int, _Seq] = {}
        self.stored_tokens = 0  # sum of every sequence's length (forked prefixes count per sequence)

    # -- queries ----------------------------------------------------------------------------
    @property
    def free_pages(self) -> int:
        return len(self._free_pages)

    @property
    def used_pages(self) -> int:
        return sum(len(b.pages) for b in self._blocks.values())

    def owned_pages(self) -> list[int]:
        """Every page held by some block (each exactly once if the model is consistent)."""
        return [p for b in self._blocks.values() for p in b.pages]

    def sequences(self) -> list[int]:
        return list(self._seqs)

    def length(self, seq_id: int) -> int:
        return self._seqs[seq_id].length

    def pages_to_append(self, seq_id: int, n: int) -> int:
        """Fresh pages ``append(seq_id, n)`` would take."""
        block = self._blocks[self._seqs[seq_id].last_block]
        room = len(block.pages) * self.page_size - block.length
        return max(0, -(-(n - room) // self.page_size))

    def pages_to_fork(self, parent: int, pos: int) -> int:
        """Fresh pages ``fork(parent, child, pos)`` takes: one if ``pos`` is mid-page."""
        pos = self._seqs[parent].length if pos == -1 else pos
        return 1 if pos % self.page_size else 0

    def pages_freed_by_remove(self, seq_id: int) -> int:
        block_id, freed = self._seqs[seq_id].last_block, 0
        while block_id != -1 and self._blocks[block_id].refs == 1:
            freed += len(self._blocks[block_id].pages)
            block_id = self._blocks[block_id].parent
        return freed

    # -- operations (mirroring TVM's) -----------------------------------------------------
    def _new_block(self, **kwargs) -> int:
        block_id = self._next_block
        self._next_block += 1
        self._blocks[block_id] = _Block(**kwargs)
        return block_id

    def _take_page(self) -> int:
        if not self._free_pages:
            raise OutOfPages("the KV cache has no free page")
        return self._free_pages.pop()

    def add(self, seq_id: int) -> None:
        if seq_id in self._seqs:
            raise ValueError(f"sequence {seq_id} already exists")
        self._seqs[seq_id] = _Seq(self._new_block())

    def append(self, seq_id: int, n: int) -> None:
        if n <= 0:
            raise ValueError("append needs at least one token")
        seq = self._seqs[seq_id]
        block = self._blocks[seq.last_block]
        if block.refs != 1:
            raise ValueError(f"sequence {seq_id}'s last block is shared and cannot grow")
        room = len(block.pages) * self.page_size - block.length
        if n > room:  # a decode step mostly fits its page: no page arithmetic then
            need = -(-(n - room) // self.page_size)
            if need > self.free_pages:
                raise OutOfPages(f"append of {n} tokens needs {need} pages, {self.free_pages} free")
            block.pages += [self._take_page() for _ in range(need)]
        block.length += n
        seq.length += n
        self.stored_tokens += n

    def remove(self, seq_id: int) -> None:
        seq = self._seqs.pop(seq_id)
        self.stored_tokens -= seq.length
        block_id = seq.last_block
        while block_id != -1 and self._blocks[block_id].refs == 1:
            block = self._blocks.pop(block_id)
            self._free_pages.extend(block.pages)
            block_id = block.parent
        if block_id != -1:
            self._blocks[block_id].refs -= 1

    def _trace(self, seq: _Seq) -> list[int]:
        trace, block_id = [], seq.last_block
        while block_id != -1:
            trace.append(block_id)
            block_id = self._blocks[block_id].parent
        return trace[::-1]

    def fork(self, parent: int, child: int, pos: int = -1) -> None:
        if child in self._seqs:
            raise ValueError(f"sequence {child} already exists")
        pseq = self._seqs[parent]
        pos = pseq.length if pos == -1 else pos
        if not 0 <= pos <= pseq.length:
            raise ValueError(f"fork position {pos} outside [0, {pseq.length}]")
        if pos % self.page_size and not self._free_pages:
            raise OutOfPages("fork inside a page needs one free page")
        ps = self.page_size
        if pos == pseq.length and pos % ps == 0 and self._blocks[pseq.last_block].length > 0:
            pseq.last_block = self._new_block(start=pseq.length, parent=pseq.last_block)
        child_block = self._new_block()
        trace = self._trace(pseq)
        offset = pos
        for forked in trace:
            fb = self._blocks[forked]
            if forked != trace[-1] and fb.length <= offset:
                offset -= fb.length
                continue
            in_page = offset % ps
            moved = offset - in_page
            moved_pages = moved // ps
            if moved_pages == 0:
                if fb.parent != -1:
                    self._blocks[fb.parent].refs += 1
                self._blocks[child_block].parent = fb.parent
            else:
                common = self._new_block(
                    pages=fb.pages[:moved_pages], length=moved, start=fb.start, parent=fb.parent, refs=2
                )
                fb.pages = fb.pages[moved_pages:]
                fb.parent = common
                fb.start += moved
                fb.length -= moved
                self._blocks[child_block].parent = common
            cb = self._blocks[child_block]
            cb.start = pos - in_page
            cb.length = in_page
            if in_page:
                cb.pages.append(self._take_page())
            break
        self._seqs[child] = _Seq(child_block, pos)
        self.stored_tokens += pos

    def popn(self, seq_id: int, n: int) -> None:
        seq = self._seqs[seq_id]
        if not 0 <= n <= seq.length:
            raise ValueError(f"cannot pop {n} tokens from a sequence of {seq.length}")
        if n == 0:
            return
        block_id = seq.last_block
        while block_id != -1 and self._blocks[block_id].refs == 1:
            block = self._blocks[block_id]
            if n > block.length:
                n -= block.length
                seq.length -= block.length
                self.stored_tokens -= block.length
                self._free_pages.extend(block.pages)
                del self._blocks[block_id]
                block_id = block.parent
                seq.last_block = block_id
                continue
            keep = -(-(block.length - n) // self.page_size)
            while len(block.pages) > keep:
                self._free_pages.append(block.pages.pop())
            seq.length -= n
            block.length -= n
            self.stored_tokens -= n
            n = 0
            break
        if n:
            temp = -1 - seq_id
            self.fork(seq_id, temp, seq.length - n)
            self.remove(seq_id)
            self._seqs[seq_id] = self._seqs.pop(temp)
