"""The library catalogue: which directory root a library UUID names. A small SQLite file under the data dir.

Operations receive a library UUID from the guest and must never trust a path it supplies for the root, so the
root always comes from here, resolved once to an absolute real path when the library is added.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import attrs

from capengine.errors import CapengineError
from capengine.host import safe_fs

log = logging.getLogger("capengine.host.libraries")

DATA_DIR_ENV = "CAPENGINE_DATA_DIR"
LIBRARY_ID_FILE = ".capengine/library-id"  # a library directory may carry its own id (the bundled sample does)
MAX_PROBED_NAMES = 1000  # existing names looked at when the probe cannot create its file
MAX_ID_FILE_BYTES = 256  # a UUID and some white space; a bigger file is not an id
_PROBE_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def default_data_dir() -> Path:
    """$CAPENGINE_DATA_DIR, else $XDG_DATA_HOME/capengine, else ~/.local/share/capengine."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "capengine"


class LibraryError(CapengineError):
    pass


def real_directory(root: str | Path) -> Path:
    """`root` resolved to the real path of a directory, or a LibraryError naming it: a link loop (which
    Path.resolve reports as RuntimeError), a name over NAME_MAX, a file or a FIFO is not a library."""
    try:
        real = Path(root).resolve(strict=False)
        if real.is_dir():
            return real
    except (OSError, RuntimeError) as exc:
        raise LibraryError(f"{root} cannot be a library: {getattr(exc, 'strerror', None) or exc}") from None
    raise LibraryError(f"{root} is not a directory")


@attrs.frozen
class Library:
    id: str  # lowercase canonical UUID
    name: str
    root: Path
    # Found by probing the volume at `library add` (probe_case_insensitive): policies then judge the on-disk
    # spelling of every path (safe_fs.spelled_path), so a deny on /photos/private/** holds for "Private".
    case_insensitive: bool = False
    # Regular files with more than one hard link are refused unless this is set (safe_fs): a link is the
    # same file under another path, which no path rule can see.
    allow_hardlinks: bool = False


def probe_case_insensitive(root: Path) -> bool:
    """Whether the volume holding `root` treats names differing in case (or normalisation) as one.

    Creates a mixed-case probe file under ROOT/.capengine and looks it up by other spellings (case, NFD, an
    ignorable U+200C). When the root is not writable, or its .capengine is not a plain directory on the root's
    volume, an existing entry is looked up with its case swapped. When nothing can be learned, the answer is
    True: treating a case-sensitive volume as insensitive only costs directory scans, the other mistake lets
    "/Private" past a deny on "/private".

    .capengine is library content: everything is done relative to descriptors opened with O_NOFOLLOW, because
    a link planted there (to a case-sensitive directory elsewhere) would otherwise make the probe answer for
    that directory, and create its file there."""
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return _probe_existing(root)
    try:
        return _probe_beneath(root_fd, root)
    finally:
        os.close(root_fd)


def _probe_beneath(root_fd: int, root: Path) -> bool:
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(".capengine", 0o700, dir_fd=root_fd)
        probe_dir = os.open(".capengine", _PROBE_DIR_FLAGS, dir_fd=root_fd)
    except OSError:  # not writable, or not a plain directory (a link, a FIFO, a file)
        return _probe_existing(root)
    token = uuid.uuid4().hex[:12]
    probe = f"Case-Probe-{token}-\u00c9".encode()
    variants = (f"case-probe-{token}-\u00e9",  # case
                f"Case-Probe-{token}-E\u0301",  # normalisation (APFS, even when case-sensitive)
                f"Case-\u200cProbe-{token}-\u00c9")  # an ignorable code point (HFS+)
    try:
        if os.fstat(probe_dir).st_dev != os.fstat(root_fd).st_dev:  # another volume mounted there
            return _probe_existing(root)
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=probe_dir))
        except OSError:
            return _probe_existing(root)
        try:
            return any(_lexists(probe_dir, variant.encode()) for variant in variants)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(probe, dir_fd=probe_dir)
    finally:
        os.close(probe_dir)


def _lexists(directory: int, name: bytes) -> bool:
    try:
        os.stat(name, dir_fd=directory, follow_symlinks=False)
    except OSError:
        return False
    return True


def read_library_id(root: Path) -> str | None:
    """The id a library directory carries in .capengine/library-id, or None when it carries none. The file is
    library content, so it is opened like any library file (safe_fs: no link followed, never a FIFO or a device,
    no hard link to a file elsewhere) and only its first bytes are read; anything else is a LibraryError that
    names the file and the way out."""
    where = root / LIBRARY_ID_FILE
    advice = f"remove {where} or give the id with --id"
    if not os.path.lexists(where):  # only a filter: what exists is opened safely below; what does not is not
        return None  # looked for under other Unicode spellings (a scan a huge root would refuse)
    try:
        with safe_fs.open_beneath(root, "/" + LIBRARY_ID_FILE) as fd:
            raw = os.read(fd, MAX_ID_FILE_BYTES + 1)
    except safe_fs.FsError as exc:
        if exc.code == "NOT_FOUND":
            return None
        raise LibraryError(f"cannot use {where} as the library's id: {exc.message}; {advice}") from None
    except OSError as exc:
        raise LibraryError(f"cannot read {where}: {exc.strerror}; {advice}") from None
    if len(raw) > MAX_ID_FILE_BYTES:
        raise LibraryError(f"{where} is over {MAX_ID_FILE_BYTES} bytes, so it is not a library id; {advice}")
    try:
        return raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise LibraryError(f"{where} is not a UUID (it is not even ASCII text); {advice}") from None


def _probe_existing(root: Path) -> bool:
    """Looks up an existing name with its case swapped: the same entry means the volume folds, another entry
    or none means it does not. At most MAX_PROBED_NAMES names are read (the root is library content: it may
    hold millions); when none of them has case, nothing is learnt and the answer is True."""
    try:
        with os.scandir(root) as entries:
            for entry in itertools.islice(entries, MAX_PROBED_NAMES):
                swapped = entry.name.swapcase()
                if swapped == entry.name or entry.name == ".capengine":  # ours may be fresh from the failed probe
                    continue
                try:
                    other = os.stat(root / swapped, follow_symlinks=False)
                except FileNotFoundError:
                    return False
                mine = entry.stat(follow_symlinks=False)
                return (other.st_dev, other.st_ino) == (mine.st_dev, mine.st_ino)
    except OSError:
        pass
    return True


class LibraryCatalog:
    """Raises LibraryError (a CapengineError naming the file and the fix) when the catalogue cannot be opened:
    a data dir that is not a directory, a file that is not a SQLite database, a read-only fresh catalogue."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self._db_path = self.data_dir / "libraries.sqlite3"
        self._known: dict[str, Library] = {}  # id -> library; a call must not cost a SQLite query
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except (FileExistsError, NotADirectoryError):
            raise LibraryError(f"data directory {self.data_dir} is not a directory; point --data-dir (or "
                               "$CAPENGINE_DATA_DIR) at a directory of your own") from None
        except OSError as exc:
            raise LibraryError(f"cannot create the data directory {self.data_dir}: {exc.strerror}; check its "
                               "permissions or point --data-dir at a writable directory") from None
        if self._db_path.exists() and not self._db_path.is_file():  # SQLite would block forever on a FIFO
            raise LibraryError(f"the library catalogue {self._db_path} is not a regular file; move it aside (it is "
                               "created again) and add the libraries again (capengine library add)")
        with self._connect() as db:
            if self._missing_columns(db):  # checked first without a lock: a read-only catalogue still opens
                # One writer at a time from here to COMMIT: processes starting together on a fresh data dir
                # would otherwise both see a column missing and the second ALTER would fail ("duplicate column").
                db.execute("BEGIN IMMEDIATE")
                db.execute("CREATE TABLE IF NOT EXISTS libraries (id TEXT PRIMARY KEY, name TEXT NOT NULL, "
                           "root TEXT NOT NULL UNIQUE)")
                # Catalogues written before these settings existed: NULL means "probe on first use".
                for column in self._missing_columns(db):
                    if column != "id":  # created with the table
                        db.execute(f"ALTER TABLE libraries ADD COLUMN {column} INTEGER")
                db.execute("COMMIT")

    @staticmethod
    def _missing_columns(db: sqlite3.Connection) -> list[str]:
        columns = {row[1] for row in db.execute("PRAGMA table_info(libraries)")}
        return [c for c in ("id", "case_insensitive", "allow_hardlinks") if c not in columns]

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in autocommit mode (statements commit alone unless wrapped in BEGIN ... COMMIT), closed
        afterwards. A damaged or unwritable catalogue becomes a LibraryError; IntegrityError passes through."""
        db = None
        try:
            db = sqlite3.connect(self._db_path, timeout=5, isolation_level=None)
            yield db
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise LibraryError(f"the library catalogue {self._db_path} cannot be used ({exc}); if it is damaged, "
                               "move it aside and add the libraries again (capengine library add)") from None
        finally:
            if db is not None:
                db.close()

    def add(self, root: str | Path, name: str | None = None, library_id: str | None = None,
            allow_hardlinks: bool = False) -> Library:
        real = real_directory(root)
        id_file = real / LIBRARY_ID_FILE
        if library_id is None:
            library_id = read_library_id(real)
        try:
            lid = str(uuid.UUID(library_id)) if library_id else str(uuid.uuid4())
        except ValueError:
            raise LibraryError(f"{library_id!r} is not a UUID (from --id or {id_file})") from None
        folds = probe_case_insensitive(real)
        try:
            with self._connect() as db:
                db.execute("INSERT INTO libraries (id, name, root, case_insensitive, allow_hardlinks) "
                           "VALUES (?, ?, ?, ?, ?)", (lid, name or real.name, str(real), folds, allow_hardlinks))
        except sqlite3.IntegrityError:
            existing = self.find_root(real)
            if existing is not None and library_id in (None, existing.id):
                return existing
            raise LibraryError(f"library {lid} or root {real} is already in the catalogue") from None
        return Library(lid, name or real.name, real, folds, allow_hardlinks)

    def _select(self, where: str, params: tuple) -> list[Library]:
        with self._connect() as db:
            rows = db.execute(f"SELECT id, name, root, case_insensitive, allow_hardlinks FROM libraries {where}",
                              params).fetchall()
            libraries = []
            for lid, name, root, folds, hardlinks in rows:
                if folds is None:  # an entry from before the probe existed
                    folds = probe_case_insensitive(Path(root))
                    db.execute("UPDATE libraries SET case_insensitive = ? WHERE id = ?", (folds, lid))
                libraries.append(Library(lid, name, Path(root), bool(folds), bool(hardlinks)))
        return libraries

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
        """Re-root a known id (a moved checkout, a second clone): same id, so policies and data still apply.
        The new root may be on another volume, so it is probed again (a folding volume must be judged by on-disk
        spelling); whether hard links are allowed is the library's setting and is kept."""
        library = self.get(library_id)
        if library is None:
            raise LibraryError(f"no library {library_id} in the catalogue (see capengine library list)")
        real = real_directory(root)
        other = self.find_root(real)
        if other is not None and other.id != library.id:
            raise LibraryError(f"{real} is already library {other.id}; remove that one first")
        folds = probe_case_insensitive(real)
        with self._connect() as db:
            db.execute("UPDATE libraries SET root = ?, case_insensitive = ? WHERE id = ?", (str(real), folds,
                                                                                          library.id))
        moved = Library(library.id, library.name, real, folds, library.allow_hardlinks)
        self._known[library.id] = moved
        return moved

    def claim(self, root: str | Path) -> Library:
        """The library at `root`, for a command given that directory explicitly (`capengine run --library`):
        its entry if known; else, when the directory carries the id of a known library (a second clone, a moved
        checkout), that id re-rooted here, said on stderr; else a new entry."""
        real = real_directory(root)
        found = self.find_root(real)
        if found is not None:
            return found
        carried = read_library_id(real)
        if carried:
            try:
                known = self.get(str(uuid.UUID(carried)))
            except ValueError:
                known = None  # `add` says what is wrong with the file
            if known is not None:
                log.warning("library %s moved from %s to %s (it carries that id in %s)", known.id, known.root,
                            real, LIBRARY_ID_FILE)
                return self.move(known.id, real)
        return self.add(real)
