"""The library catalogue: which directory root a library UUID names. A small SQLite file under the data dir.

Operations receive a library UUID from the guest and must never trust a path it supplies for the root, so the
root always comes from here, resolved once to an absolute real path when the library is added.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import uuid
from pathlib import Path

import attrs

from capengine.errors import CapengineError

log = logging.getLogger("capengine.host.libraries")

DATA_DIR_ENV = "CAPENGINE_DATA_DIR"
LIBRARY_ID_FILE = ".capengine/library-id"  # a library directory may carry its own id (the bundled sample does)


def default_data_dir() -> Path:
    """$CAPENGINE_DATA_DIR, else $XDG_DATA_HOME/capengine, else ~/.local/share/capengine."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "capengine"


class LibraryError(CapengineError):
    pass


@attrs.frozen
class Library:
    id: str  # lowercase canonical UUID
    name: str
    root: Path


class LibraryCatalog:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db_path = self.data_dir / "libraries.sqlite3"
        self._known: dict[str, Library] = {}  # id -> library; a call must not cost a SQLite query
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS libraries (id TEXT PRIMARY KEY, name TEXT NOT NULL, "
                       "root TEXT NOT NULL UNIQUE)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self._db_path, timeout=5)

    def add(self, root: str | Path, name: str | None = None, library_id: str | None = None) -> Library:
        real = Path(root).resolve(strict=False)
        if not real.is_dir():
            raise LibraryError(f"{root} is not a directory")
        id_file = real / LIBRARY_ID_FILE
        if library_id is None and id_file.is_file():
            library_id = id_file.read_text().strip()
        try:
            lid = str(uuid.UUID(library_id)) if library_id else str(uuid.uuid4())
        except ValueError:
            raise LibraryError(f"{library_id!r} is not a UUID (from --id or {id_file})") from None
        try:
            with self._connect() as db:
                db.execute("INSERT INTO libraries (id, name, root) VALUES (?, ?, ?)", (lid, name or real.name,
                                                                                        str(real)))
        except sqlite3.IntegrityError:
            existing = self.find_root(real)
            if existing is not None and library_id in (None, existing.id):
                return existing
            raise LibraryError(f"library {lid} or root {real} is already in the catalogue") from None
        return Library(lid, name or real.name, real)

    def _select(self, where: str, params: tuple) -> list[Library]:
        with self._connect() as db:
            rows = db.execute(f"SELECT id, name, root FROM libraries {where}", params).fetchall()
        return [Library(row[0], row[1], Path(row[2])) for row in rows]

    def get(self, library_id: str) -> Library | None:
        """Cached: entries are never changed in place, and an id unknown here is looked up again (another
        process may have added it since)."""
        library = self._known.get(library_id)
        if library is None:
            found = self._select("WHERE id = ?", (library_id,))
            if not found:
                return None
            library = self._known[library_id] = found[0]
        return library

    def find_root(self, root: Path) -> Library | None:
        found = self._select("WHERE root = ?", (str(root),))
        return found[0] if found else None

    def list(self) -> list[Library]:
        return self._select("ORDER BY name, id", ())

    def remove(self, library_id: str) -> Library:
        """Forget a library (its files are untouched). Sidecars keyed by content stay in the data dir."""
        library = self.get(library_id)
        if library is None:
            raise LibraryError(f"no library {library_id} in the catalogue (see capengine library list)")
        with self._connect() as db:
            db.execute("DELETE FROM libraries WHERE id = ?", (library.id,))
        self._known.pop(library.id, None)
        return library

    def move(self, library_id: str, root: str | Path) -> Library:
        """Re-root a known id (a moved checkout, a second clone): same id, so policies and data still apply."""
        library = self.get(library_id)
        if library is None:
            raise LibraryError(f"no library {library_id} in the catalogue (see capengine library list)")
        real = Path(root).resolve(strict=False)
        if not real.is_dir():
            raise LibraryError(f"{root} is not a directory")
        other = self.find_root(real)
        if other is not None and other.id != library.id:
            raise LibraryError(f"{real} is already library {other.id}; remove that one first")
        with self._connect() as db:
            db.execute("UPDATE libraries SET root = ? WHERE id = ?", (str(real), library.id))
        moved = Library(library.id, library.name, real)
        self._known[library.id] = moved
        return moved

    def claim(self, root: str | Path) -> Library:
        """The library at `root`, for a command given that directory explicitly (`capengine run --library`):
        its entry if known; else, when the directory carries the id of a known library (a second clone, a moved
        checkout), that id re-rooted here, said on stderr; else a new entry."""
        real = Path(root).resolve(strict=False)
        found = self.find_root(real)
        if found is not None:
            return found
        id_file = real / LIBRARY_ID_FILE
        if id_file.is_file():
            try:
                known = self.get(str(uuid.UUID(id_file.read_text().strip())))
            except ValueError:
                known = None
            if known is not None:
                log.warning("library %s moved from %s to %s (it carries that id in %s)", known.id, known.root,
                            real, LIBRARY_ID_FILE)
                return self.move(known.id, real)
        return self.add(real)
