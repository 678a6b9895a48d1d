"""What a compaction is about to delete, written down first, so that no rethink reader ever reads a
file that vanishes under it (compact.py deletes; reader.py and parts.py read).

A compaction replaces files: the older parts it merged and the folded runs' own files. Deleting
them under a running query failed it ("No such file or directory"), or worse, left a run's rows
out without an error (the query had listed the run's own file, so skipped the run in the part
that now holds it). Why neither of the other fixes: keeping the replaced files for a grace period
would leave the README's plain readers (DuckDB, pandas, polars globs) counting every folded row
twice until a later compaction, and a manifest every reader must go through would break them
outright. So the files still go at once, and readers are made safe around it:

1. the compaction writes `compaction/retired=GEN.json` naming the files the new part GEN
   replaces (each run's file with its identity when read, so a rewrite since is not one of
   them), then the marker `compaction/newest.json` (with a fresh nonce), and only then deletes
   them; then it writes the marker again, and deletes the record last;
2. a reader that lists the store while a record exists never opens a file it names (a part's
   runs are all in a newer part; a run's own file is read from the part that folded it), so
   the deletion cannot touch it;
3. a reader that listed the store before the record was written sees the marker change by the
   end of its work (every deletion comes after the marker) and runs again (Reader.run), now
   seeing the record; one whose work failed runs again when the marker changed or a record is
   there (one of the two holds after any deletion: the record goes only after the second
   marker), so even a file wrongly thought unchanged costs a rerun, never a wrong answer.
A compaction killed before deleting the record leaves it: the next compaction finishes its
deletions first (compact.py), writing the marker again before it deletes anything."""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import pyarrow.fs as pafs

from rethink.storage import layout
from rethink.storage.errors import StoreError

if TYPE_CHECKING:
    from rethink.storage.store import Store

PATTERN = re.compile(r"retired=(.+)\.json")  # a record's name (layout.retired_record)
Listing = Callable[[str], "list[pafs.FileInfo]"]


record_path = layout.retired_record


def gen_of(path: str) -> str:
    """The GEN of a record's path."""
    match = PATTERN.fullmatch(path.rsplit("/", 1)[-1])
    return match.group(1) if match else ""


@dataclass
class Record:
    """One compaction's replaced files: parts (paths) and per-run files {run_id: (attempt,
    {path: identity when read})}; the identity is compact._ident's (inode, mtime_ns, size) locally,
    (mtime_ns, size) elsewhere."""

    path: str
    parts: list[str] = field(default_factory=list)
    runs: dict[str, tuple[int, dict[str, tuple]]] = field(default_factory=dict)


def write(store: Store, gen: str, parts: list[str], runs: dict[str, tuple[int, dict[str, tuple]]]) -> None:
    body = {"gen": gen, "parts": sorted(parts),
            "runs": {run: {"attempt": attempt, "files": {p: list(i) for p, i in files.items()}}
                     for run, (attempt, files) in sorted(runs.items())}}
    store.write(record_path(gen), json.dumps(body).encode())


def records(store: Store, files: Listing | None = None) -> list[Record]:
    """The records in the store now, oldest first; a damaged or vanished one names nothing."""
    if files is not None:
        base = store.path(layout.COMPACT_LOCKS) + "/"
        names = [info.path[len(base):] for info in files(layout.COMPACT_LOCKS) if info.path.startswith(base)]
    else:
        names = store.listdir(layout.COMPACT_LOCKS)
    out = []
    for name in sorted(n for n in names if PATTERN.fullmatch(n)):
        relative = f"{layout.COMPACT_LOCKS}/{name}"
        try:
            blob = store.read(relative)
        except StoreError:  # deleted since the listing (S3 says so as an error): its compaction is done
            continue
        if blob is None:
            continue
        try:
            body = json.loads(blob)
            runs = {str(run): (int(v["attempt"]), {str(p): tuple(i) for p, i in v["files"].items()})
                    for run, v in body.get("runs", {}).items()}
            out.append(Record(relative, [str(p) for p in body.get("parts", [])], runs))
        except (ValueError, TypeError, KeyError, AttributeError):
            out.append(Record(relative))
    return out


def marker_state(store: Store) -> bytes | None:
    """The marker's bytes: a change means a compaction may have deleted files since."""
    return store.read(layout.PARTS_MARKER)


@dataclass(frozen=True)
class Skip:
    """What a reader must not open: parts, and per table the runs whose own file is one a
    compaction replaced (unchanged since: a rewrite is read as usual)."""

    parts: frozenset[str] = frozenset()
    runs: dict[str, frozenset[str]] = field(default_factory=dict)


def skip(store: Store, files: Listing | None = None) -> Skip:
    """The files the records in the store name (usually none: a record lives while its
    compaction deletes). `files`: a remote store's listing (scans.Scan.files), which gives each
    file's size and time with no request of its own."""
    found = records(store, files)
    if not found:
        return Skip()
    parts = frozenset(p for record in found for p in record.parts)
    runs: dict[str, set[str]] = {table: set() for table in layout.TABLE_FILES}
    seen = _remote_seen(store, files) if not store.local else {}
    for record in found:
        for run_id, (_, idents) in record.runs.items():
            for relative, ident in idents.items():
                table = next((t for t, (folder, name) in layout.TABLE_FILES.items()
                              if relative == f"{folder}/{layout.RUN_PREFIX}{run_id}/{name}"), None)
                if table is not None and _unchanged(store, relative, ident, seen):
                    runs[table].add(run_id)
    return Skip(parts, {table: frozenset(ids) for table, ids in runs.items()})


def _remote_seen(store: Store, files: Listing | None) -> dict[str, tuple[int, int]]:
    """{relative path: (mtime_ns, size)} of the per-run files, from one listing per table folder."""
    seen = {}
    base = store.path("")
    for folder, _ in layout.TABLE_FILES.values():
        infos = files(folder) if files is not None else store.fs.get_file_info(
            pafs.FileSelector(store.path(folder), allow_not_found=True, recursive=True))
        for info in infos:
            if info.type == pafs.FileType.File and info.mtime_ns is not None:
                seen[info.path[len(base):]] = (info.mtime_ns, info.size)
    return seen


def _unchanged(store: Store, relative: str, ident: tuple, seen: dict[str, tuple[int, int]]) -> bool:
    """Whether the file is still the one the compaction read: locally its inode, time and size;
    elsewhere its size and time to the second (a listing and a HEAD may differ below that)."""
    if store.local:
        try:
            st = os.stat(store.path(relative), follow_symlinks=False)
        except OSError:
            return False
        return (st.st_ino, st.st_mtime_ns, st.st_size) == tuple(ident)
    now = seen.get(relative)
    return now is not None and len(ident) == 2 and now[1] == ident[1] and now[0] // 10**9 == ident[0] // 10**9


def new_marker(gen: str) -> bytes:
    """The marker's content: the newest GEN, and a nonce so that every write changes it."""
    return json.dumps({"newest": gen, "nonce": uuid.uuid4().hex}).encode()
