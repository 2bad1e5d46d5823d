"""Stop strings over streamed text.

Text that could still become a stop string is held back, so a client never receives part of a
stop sequence; when a stop string appears, the output ends just before it (OpenAI semantics:
the stop string itself is not returned). "Appears" means completed: of overlapping stop strings the
one that ends first wins (of those ending together, the longest), as if the text had streamed in
one character at a time, so the output does not depend on how the text was chunked.
"""

from __future__ import annotations


class StopStringMatcher:
    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.held = ""

    def feed(self, delta: str) -> tuple[str, bool]:
        """Add new text; return (text safe to emit, whether a stop string was hit)."""
        if not self.stops:
            return delta, False
        text = self.held + delta
        ends = [(i + len(s), i) for s in self.stops if (i := text.find(s)) >= 0]
        if ends:
            self.held = ""
            return text[: min(ends)[1]], True
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), hold, -1):
                if stop.startswith(text[-k:]):
                    hold = k
                    break
        self.held = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold], False

    def flush(self) -> str:
        """Held-back text at the end of generation (it never completed a stop string)."""
        held, self.held = self.held, ""
        return held
