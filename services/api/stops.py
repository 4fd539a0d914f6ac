"""Stop strings over streamed text: emit what cannot be the start of a stop, trim at the first stop."""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Feeds text deltas; holds back a tail that may grow into a stop string."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False

    def feed(self, delta: str) -> str:
        """The text that may be sent now; after a stop, nothing more (``stopped`` is set)."""
        if self.stopped:
            return ""
        text = self._held + delta
        hits = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        if hits:
            self.stopped, self._held = True, ""
            return text[: min(hits)]
        keep = max((n for s in self._stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """What was held back, once the output ended without a stop."""
        held, self._held = self._held, ""
        return "" if self.stopped else held
