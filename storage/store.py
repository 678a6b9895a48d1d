"""A store: the experiments, run status, claims, epoch rows and checkpoints of `layout.py`, on a
local directory or any pyarrow filesystem URI. Every write is atomic (locally a temporary name,
then rename; on S3 one PUT); claims and grid freezes are exactly-once (claims.py); epoch rows are
keyed by (run_id, epoch) and the file is rewritten whole, so a rewrite replaces rows and never
duplicates them; a compacted run's rows and status are read from its part (parts.py)."""

from __future__ import annotations

import io
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rethink.errors import os_errors, os_reason
from rethink.storage import limits, schema
from rethink.storage.claims import Claims, now  # noqa: F401 - now is re-exported
from rethink.storage.errors import DamagedFileError, StoreError  # noqa: F401 - re-exported: callers import them here
from rethink.storage.layout import MARKER, NAME_PATTERN, ExperimentPaths, RunPaths, epoch_of
from rethink.storage.localfs import LocalStore

if TYPE_CHECKING:
    from rethink.storage.objectstore import S3Objects



def _resolved(grid_text: str) -> str:
    """A frozen grid without its header comment, which names the file it came from: the same grid
    submitted from another path (another checkout, another working directory) is the same grid."""
    first, newline, rest = grid_text.partition("\n")
    return rest if first.startswith("# grid ") and newline else grid_text


class Store(Claims):
    def __init__(self, fs: pafs.FileSystem, root: str, uri: str):
        self.fs, self.root, self.uri = fs, root.rstrip("/"), uri
        self.local = isinstance(fs, pafs.LocalFileSystem)
        # Locally every file operation walks below the root without following a link (localfs.py).
        self.files = LocalStore(self.root, uri) if self.local else None
        self._objects: S3Objects | None = None
        self._beats: dict[str, float] = {}  # claim -> time.monotonic() of its last heartbeat here

    @classmethod
    def open(cls, uri: str | Path, create: bool = False) -> Store:
        """Open the store at `uri`; with create, make it when the place is absent or empty."""
        text = str(uri)
        if "://" not in text:
            text = os.path.expanduser(text)  # `--store=~/runs`: the shell leaves a `~` after `=` alone
        scheme, sep, rest = text.partition("://")
        if sep and scheme.lower() in ("s3", "gs", "gcs") and not rest.split("/", 1)[0].split("?", 1)[0]:
            raise StoreError(f"the store URI names no bucket: give {scheme}://BUCKET/PATH")
        if not text.strip():
            raise StoreError("--store is empty: give a folder or a URI such as s3://BUCKET/PATH")
        try:
            from rethink.storage.uri import open_filesystem  # credentials refused, remote waits bounded

            fs, root = open_filesystem(text if "://" in text else str(Path(text).absolute()))
        except (pa.ArrowInvalid, ValueError, OSError) as exc:
            raise StoreError(f"cannot open store '{text}': {' '.join(str(exc).split())}") from None
        store = cls(fs, root, text)
        kind = store._info(root).type
        if kind == pafs.FileType.File:
            raise StoreError(f"'{text}' is a file, not a store folder")
        if kind not in (pafs.FileType.Directory, pafs.FileType.NotFound):  # a device, FIFO or socket
            raise StoreError(f"'{text}' is not a folder (a device, pipe or socket); give a folder for the store")
        if store._info(f"{root}/{MARKER}").type == pafs.FileType.File:
            return store
        if not create:
            raise StoreError(f"'{text}' is not a rethink store (no {MARKER}); `rethink submit` makes one")
        if kind == pafs.FileType.Directory and [  # another submit making it now leaves only its marker
                i for i in fs.get_file_info(pafs.FileSelector(root)) if not i.base_name.startswith((MARKER, f".{MARKER}."))]:
            raise StoreError(f"'{text}' is a folder that is not empty and not a rethink store; choose another --store")
        with os_errors("create the store", f"'{text}'"):  # the first write: a path that cannot be a store
            store._write(MARKER, json.dumps({"rethink_store": 1, "created": now().isoformat()}).encode())
        return store

    # -- files ----------------------------------------------------------------------------------

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    @property
    def objects(self) -> S3Objects | None:
        """Conditional and single-PUT writes (boto3) when the store is on S3; None elsewhere."""
        if self._objects is None and self.fs.type_name == "s3":
            from rethink.storage.objectstore import S3Objects

            self._objects = S3Objects(self.uri)
        return self._objects

    @property
    def exclusive(self) -> bool:
        """Whether this store kind can create a file only when absent (local disk, S3). Without it
        claims and grid freezes are check-then-write, so one driver at a time (driver_lease)."""
        return self.local or self.fs.type_name == "s3"

    def _info(self, full: str) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(full)
        except OSError as exc:
            raise StoreError(f"cannot read store '{self.uri}': {' '.join(str(exc).split())}") from None

    def exists(self, relative: str) -> bool:
        if self.files is not None:
            with self._reading(relative):
                return self.files.is_file(relative)
        return self._info(self.path(relative)).type == pafs.FileType.File

    def write(self, relative: str, data: bytes) -> None:
        """Replace the file whole: readers see the old one or the new one, never half of it. An
        OSError (a read-only or full disk, no permission) is one StoreError line."""
        with self._writing(relative):
            self._write(relative, data)

    def _write(self, relative: str, data: bytes) -> None:
        if self.files is not None:
            self.files.write(relative, data)
            return
        full = self.path(relative)
        if self.objects is not None:  # one PUT is atomic on S3; a temporary object + move is a copy
            self.objects.put(full, data)
            return
        tmp = f"{full}.{uuid.uuid4().hex}.tmp"
        self.fs.create_dir(full.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(tmp) as out:
            out.write(data)
        self.fs.move(tmp, full)

    @contextmanager
    def _writing(self, relative: str) -> Iterator[None]:
        """An OSError of writing or deleting `relative` as one StoreError line (local stores;
        an object store's client words its own)."""
        try:
            yield
        except OSError as exc:
            if not self.local:
                raise
            raise StoreError(f"cannot write {relative} in store '{self.uri}': {os_reason(exc)}") from None

    @contextmanager
    def _reading(self, relative: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:  # e.g. refused credentials on an object store, a file for a folder: one line
            raise StoreError(f"cannot read {relative} in store '{self.uri}': {os_reason(exc)}") from None

    @contextmanager
    def open_file(self, relative: str) -> Iterator[tuple[IO[bytes] | pa.NativeFile, int] | None]:
        """The file open for reading and its size, after refusing a size past its limit
        (storage/limits.py); None when it is absent. Locally no link is followed (localfs.py)."""
        with self._reading(relative):
            if self.files is not None:
                found = self.files.open_read(relative)
            else:
                try:
                    f = self.fs.open_input_file(self.path(relative))
                    found = (f, f.size())
                except FileNotFoundError:
                    found = None
        if found is None:
            yield None
            return
        with found[0]:
            limits.check_size(relative, found[1])
            yield found

    def read(self, relative: str) -> bytes | None:
        """The file's bytes; None when it is absent; DamagedFileError past its size limit."""
        if self.files is not None:
            with self.open_file(relative) as found:
                if found is None:
                    return None
                with self._reading(relative):
                    return found[0].read()
        limit = limits.limit_for(relative)
        with self._reading(relative):
            try:
                with self.fs.open_input_stream(self.path(relative)) as f:
                    data = f.read(limit.bytes + 1)  # one GET, no HEAD; never more than the limit
            except FileNotFoundError:
                return None
        if len(data) > limit.bytes:
            raise limit.refuse(relative, len(data))
        return data

    def delete(self, relative: str) -> None:
        if self.objects is not None:  # S3: one DELETE, no folder marker left behind
            self.objects.delete(self.path(relative))
            return
        if self.files is not None:
            with self._writing(relative):
                self.files.delete(relative)
            return
        try:
            self.fs.delete_file(self.path(relative))
        except FileNotFoundError:
            pass

    def listdir(self, relative: str) -> list[str]:
        if self.files is not None:
            try:
                return self.files.listdir(relative)
            except OSError as exc:
                raise StoreError(f"cannot list {relative} in store '{self.uri}': {os_reason(exc)}") from None
        selector = pafs.FileSelector(self.path(relative), allow_not_found=True)
        try:
            return sorted(info.base_name for info in self.fs.get_file_info(selector))
        except OSError as exc:  # e.g. refused credentials: one line, as _info says it
            raise StoreError(f"cannot list store '{self.uri}': {' '.join(str(exc).split())}") from None

    def write_table(self, relative: str, rows: list[dict], table_schema: pa.Schema) -> None:
        buffer = io.BytesIO()
        pq.write_table(schema.table(rows, table_schema), buffer)
        self.write(relative, buffer.getvalue())

    def read_table(self, relative: str) -> list[dict] | None:
        """The file's rows; None when it is absent. Its size, rows and decoded bytes are checked
        against its limit (storage/limits.py) before a row is decoded."""
        blob = self.read(relative)
        if blob is None:
            return None
        try:
            parquet = pq.ParquetFile(pa.BufferReader(blob))
            limits.check_parquet(relative, parquet.metadata)
            return parquet.read().to_pylist()
        except (pa.ArrowInvalid, OSError) as exc:
            raise DamagedFileError(f"{relative} is damaged: {' '.join(str(exc).split())}") from None

    def check_table(self, relative: str) -> None:
        """Refuse (DamagedFileError) a Parquet file past its limits or whose footer cannot be read,
        reading only the footer: for files others read whole (DuckDB, through the views)."""
        with self.open_file(relative) as found:
            if found is None:
                return
            try:
                limits.check_parquet(relative, pq.ParquetFile(found[0]).metadata)
            except (pa.ArrowInvalid, OSError) as exc:
                raise DamagedFileError(f"{relative} is damaged: {' '.join(str(exc).split())}") from None

    def read_arrow(self, relative: str) -> pa.Table | None:
        """The file's rows as Arrow, read through `open_file` with its limits; None when absent."""
        with self.open_file(relative) as found:
            if found is None:
                return None
            parquet = pq.ParquetFile(found[0])
            limits.check_parquet(relative, parquet.metadata)
            return parquet.read()

    # -- experiments ----------------------------------------------------------------------------

    def check_experiment(self, name: str, grid_text: str) -> bool:
        """True when the experiment is already saved with this grid; refuses another grid."""
        paths = ExperimentPaths(name)  # checks the name (layout.check_name)
        old = self.read(paths.grid)
        if old is None:
            return False
        if _resolved(_grid_text(paths.grid, old)) != _resolved(grid_text):
            raise StoreError(
                f"experiment '{name}' already exists in this store with a different grid; "
                f"rename it, or `rethink resume {name}` to finish the existing one"
            )
        return self.exists(paths.runs)

    def save_experiment(self, name: str, grid_text: str, rows: list[dict]) -> None:
        """Freeze an experiment's grid and run list, exactly once: grid.yaml is created only when
        absent, so of two submits started together one wins; the other reads the winner's grid
        (the same text is a no-op, another grid is refused). runs.parquet follows the grid; a
        winner that died in between is completed by the same grid submitted again."""
        paths = ExperimentPaths(name)
        if not self._create_exclusive(paths.grid, grid_text.encode()) and self.check_experiment(name, grid_text):
            return
        self.write_table(paths.runs, rows, schema.EXPERIMENT_RUNS)  # the same grid makes the same rows

    def experiments(self) -> list[str]:
        """The experiments' names; a folder whose name rethink never writes (`name=../x`, ESC) is
        not one, so one stray folder cannot make `status` or a notebook fail or print it."""
        names = [n.split("=", 1)[1] for n in self.listdir("experiments") if n.startswith("name=")]
        return [n for n in names if NAME_PATTERN.fullmatch(n)]

    def experiment_grid(self, name: str) -> str:
        blob = self.read(ExperimentPaths(name).grid)
        if blob is None:
            known = ", ".join(self.experiments()) or "none yet"
            raise StoreError(f"no experiment '{name}' in store '{self.uri}' (experiments: {known})")
        return _grid_text(ExperimentPaths(name).grid, blob)

    def experiment_rows(self, name: str) -> list[dict]:
        self.experiment_grid(name)
        return self.read_table(ExperimentPaths(name).runs) or []

    def request_cancel(self, name: str) -> None:
        self.experiment_grid(name)
        self.write(ExperimentPaths(name).cancel, json.dumps({"at": now().isoformat()}).encode())

    def cancel_requested(self, name: str) -> bool:
        return self.exists(ExperimentPaths(name).cancel)

    def clear_cancel(self, name: str) -> None:
        self.delete(ExperimentPaths(name).cancel)

    # -- run status -----------------------------------------------------------------------------

    def read_status(self, run_id: str) -> dict | None:
        """The run's status row: its own file, else the newest compacted part holding it."""
        try:
            rows = self.read_table(RunPaths(run_id).status)
            if rows is None:
                rows = self._part_rows("status", run_id)
        except DamagedFileError:
            return None  # a damaged status is as good as none: the run is redone
        return rows[0] if rows else None

    def write_status(self, run_id: str, **fields: object) -> dict:
        """Merge `fields` into the run's status row and rewrite it."""
        row = self.read_status(run_id) or {"run_id": run_id, "attempts": 0}
        row.update(fields, updated_at=now())
        self.put_status(run_id, row)
        return row

    def put_status(self, run_id: str, row: dict) -> None:
        """Write the run's whole status row as given, reading nothing (its owner holds it)."""
        self.write_table(RunPaths(run_id).status, [row], schema.STATUS)

    # -- epochs and checkpoints -----------------------------------------------------------------

    def read_epochs(self, run_id: str) -> list[dict]:
        """The run's epoch rows; DamagedFileError when the file is unreadable or its columns are
        not the epochs schema's (a resume would otherwise carry them on)."""
        relative = RunPaths(run_id).epochs
        rows = self.read_table(relative)
        if rows is None:  # no file of its own: compacted, or none yet
            return self._part_rows("epochs", run_id) or []
        if rows:
            self._check_columns(relative, rows[0].keys(), self._file_schema(relative))
        return rows

    def _part_rows(self, table: str, run_id: str) -> list[dict] | None:
        """The run's rows in the newest compacted part holding it (storage/parts.py); None when
        no part holds it."""
        from rethink.storage import parts

        try:
            found = parts.read_run(self, table, run_id)  # type: ignore[arg-type]
        except (pa.ArrowInvalid, OSError) as exc:
            raise DamagedFileError(f"a compacted part holding run {run_id} is damaged: "
                                   f"{' '.join(str(exc).split())}") from None
        return None if found is None else found.to_pylist()

    def epoch_rows(self, run_id: str) -> int | None:
        """How many epoch rows the run's file (else its newest compacted part) holds, reading only a
        footer; None when neither has it, or the file is unreadable or of another schema (for
        checking done runs cheaply)."""
        relative = RunPaths(run_id).epochs
        try:
            file_schema = self._file_schema(relative)
            if file_schema is None:  # compacted: the newest part's footer counts its rows
                from rethink.storage import parts

                return parts.run_rows(self, "epochs", run_id)
            self._check_columns(relative, file_schema.names, file_schema)
            with self.open_file(relative) as found:
                return None if found is None else pq.ParquetFile(found[0]).metadata.num_rows
        except (DamagedFileError, pa.ArrowInvalid, OSError):
            return None

    def _file_schema(self, relative: str) -> pa.Schema | None:
        try:
            with self.open_file(relative) as found:
                return None if found is None else pq.ParquetFile(found[0]).schema_arrow
        except (pa.ArrowInvalid, OSError) as exc:
            raise DamagedFileError(f"{relative} is damaged: {' '.join(str(exc).split())}") from None

    @staticmethod
    def _check_columns(relative: str, names, file_schema: pa.Schema | None) -> None:
        expected = schema.EPOCHS
        for name in names:
            if name not in expected.names:
                raise DamagedFileError(f"{relative} is damaged: unknown column {name!r}")
            if file_schema is not None and file_schema.field(name).type != expected.field(name).type:
                raise DamagedFileError(f"{relative} is damaged: column {name!r} is "
                                       f"{file_schema.field(name).type}, not {expected.field(name).type}")

    def write_epochs(self, run_id: str, rows: list[dict]) -> None:
        by_epoch = {row["epoch"]: row for row in rows}  # keyed by (run_id, epoch): never two rows
        self.write_table(RunPaths(run_id).epochs, [by_epoch[e] for e in sorted(by_epoch)], schema.EPOCHS)

    def checkpoint_epochs(self, run_id: str) -> list[int]:
        names = self.listdir(RunPaths(run_id).checkpoints)
        return sorted(e for e in map(epoch_of, names) if e is not None)

    def write_checkpoint(self, run_id: str, epoch: int, blob: bytes, keep: int = 2) -> None:
        """Write the checkpoint of `epoch`, then drop all but the newest `keep`."""
        self.write(RunPaths(run_id).checkpoint(epoch), blob)
        for old in self.checkpoint_epochs(run_id)[:-keep]:
            self.delete(RunPaths(run_id).checkpoint(old))

    def read_checkpoint(self, run_id: str, epoch: int) -> bytes | None:
        return self.read(RunPaths(run_id).checkpoint(epoch))

    def delete_checkpoint(self, run_id: str, epoch: int) -> None:
        self.delete(RunPaths(run_id).checkpoint(epoch))


def _grid_text(relative: str, blob: bytes) -> str:
    """A frozen grid's text: rethink writes it as UTF-8, so other bytes are damage, one line."""
    try:
        return blob.decode()
    except UnicodeDecodeError as exc:
        raise DamagedFileError(f"{relative} is damaged: it is not UTF-8 text (byte {exc.start}); put back the grid "
                               "file the experiment was submitted with") from None
