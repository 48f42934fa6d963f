"""Genre and artist names ↔ the label ids a prior was trained with (stored in its checkpoint)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jukebox_lite.core.checkpoint import load_checkpoint
from jukebox_lite.core.errors import UserError


@dataclasses.dataclass
class PriorVocabulary:
    """The genre and artist names a prior was trained with; a name's position is its label id."""

    genres: list[str]
    artists: list[str]

    @classmethod
    def from_checkpoint(cls, state: dict) -> PriorVocabulary:
        return cls(list(state.get("genres") or []), list(state.get("artists") or []))

    @classmethod
    def load(cls, path: str | Path) -> PriorVocabulary:
        """The vocabulary stored in a prior checkpoint (a run folder such as RUN/prior_level2, or a .pt)."""
        return cls.from_checkpoint(load_checkpoint(path, "prior"))

    def extended(self, genres: list[str], artists: list[str]) -> PriorVocabulary:
        """These ids kept, names not yet known appended (a resumed run on a grown corpus)."""
        return PriorVocabulary(
            self.genres + [g for g in genres if g not in self.genres],
            self.artists + [a for a in artists if a not in self.artists],
        )

    def genre_id(self, name: str) -> int:
        return self._lookup(self.genres, name, "genre")

    def artist_id(self, name: str) -> int:
        return self._lookup(self.artists, name, "artist")

    @staticmethod
    def _lookup(names: list[str], name: str, what: str) -> int:
        if name in names:
            return names.index(name)
        known = ", ".join(names) if names else "none (an imported prior: use label ids)"
        raise UserError(f"The {what} '{name}' is unknown to this prior; known {what}s: {known}.")
