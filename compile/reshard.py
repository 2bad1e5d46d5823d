"""Cut converted weights into the row shards of a split network (``compile/model/split.py``).

Numpy only, like ``compile/weights.py``: ``compile/restore_weights.py`` regenerates a split
artifact's weights on a machine with just the TVM runtime, from the layout its manifest records
(``extra.param_splits``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import numpy as np

from ferrum.errors import ModelSourceError

# new parameter name -> (parameter it is cut from, first row, row after the last)
Layout = dict[str, tuple[str, int, int]]


def reshard(arrays: Iterator[tuple[str, np.ndarray]], order: list[str], layout: Layout
            ) -> Iterator[tuple[str, np.ndarray]]:
    """The converted weights (``arrays``, in the unsplit network's order) as the split network's
    parameters ``order``: a parameter in ``layout`` is its rows of the one it is cut from."""
    uses = Counter(layout[name][0] if name in layout else name for name in order)
    pending: dict[str, np.ndarray] = {}
    wanted = iter(order)
    name = next(wanted, None)
    for source, array in arrays:
        pending[source] = array
        while name is not None:
            src, start, stop = layout.get(name, (name, None, None))
            if src not in pending:
                break
            yield name, pending[src] if start is None else np.ascontiguousarray(pending[src][start:stop])
            uses[src] -= 1
            if not uses[src]:
                del pending[src]
            name = next(wanted, None)
    if name is not None or pending:
        raise ModelSourceError(f"converted weights do not cover the split network's parameters (next: {name}, "
                               f"left over: {sorted(pending)[:3]})")
