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


def imported_names(what: str, count: int) -> list[str]:
    """Names for an imported prior's label rows, which carry ids but no names: openai_genre_0, ..."""
    return [f"openai_{what}_{i}" for i in range(count)]


def openai_ids(folder: str | Path, version: str, what: str) -> dict[str, int]:
    """OpenAI's name → id table (`{version}_{what}_ids.txt` in a Jukebox checkout: lines 'name;id')."""
    path = Path(folder) / f"{version}_{what}_ids.txt"
    if not path.is_file():
        raise UserError(f"No OpenAI {what} id file at '{path}'; point styles.ids to jukebox/data/ids in a Jukebox checkout.")
    table = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        name, sep, value = line.rpartition(";")
        if not sep or not value.strip().isdigit():
            raise UserError(f"'{path}' line {number} is not 'name;id'; is it one of OpenAI's id files?")
        table.setdefault(name.strip(), int(value))
    return table


def style_rows(sources: dict[str, int | str], names: list[str], imported: int, what: str,
               ids: str | Path | None, version: str, default: int) -> list[int]:
    """For each of `names` (the corpus's new names, in id order after the `imported` rows), the imported row
    its label row starts from: its entry in `sources` (an id, or a name looked up in OpenAI's id file),
    else `default`. Any id outside the imported rows, unknown name or missing file is one UserError."""
    table = None
    rows = []
    for name in names:
        source = sources.get(name, default)
        if isinstance(source, str):
            if ids is None:
                raise UserError(f"styles.{what}s names '{source}' for '{name}'; set styles.ids to OpenAI's id files to use names, or give its id.")
            table = table if table is not None else openai_ids(ids, version, what)
            key = source.strip().lower().replace(" ", "_")
            if key not in table:
                raise UserError(f"styles.{what}s: '{source}' is not in OpenAI's {version} {what} ids ('{ids}').")
            source = table[key]
        if not 0 <= source < imported:
            raise UserError(f"styles.{what}s: id {source} for '{name}' is outside the imported prior's {imported} {what} rows.")
        rows.append(source)
    unknown = sorted(set(sources) - set(names))
    if unknown:
        raise UserError(f"styles.{what}s names '{unknown[0]}', which is not a {what} of this corpus.")
    return rows
