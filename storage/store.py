"""A store: the experiments, run status, claims, epoch rows and checkpoints of `layout.py`, on a
local directory or any pyarrow filesystem URI. Every write is atomic (temporary name, then
rename); epoch rows are keyed by (run_id, epoch) and the file is rewritten whole, so a rewrite
replaces rows and never duplicates them."""

from __future__ import annotations

import io
import json
import os
import socket
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rethink.errors import RethinkError, os_errors
from rethink.storage import schema
from rethink.storage.atomic import write_bytes
from rethink.storage.layout import MARKER, ExperimentPaths, RunPaths, attempt_of, epoch_of

CLAIM_TIMEOUT_S = float(os.environ.get("RETHINK_CLAIM_TIMEOUT", 600))  # no heartbeat this long: stale


class StoreError(RethinkError):
    """A store that cannot be opened or written as asked."""


class DamagedFileError(StoreError):
    """A file in the store that cannot be read back (truncated or not Parquet)."""


def now() -> datetime:
    return datetime.now(timezone.utc)


class Store:
    def __init__(self, fs: pafs.FileSystem, root: str, uri: str):
        self.fs, self.root, self.uri = fs, root.rstrip("/"), uri
        self.local = isinstance(fs, pafs.LocalFileSystem)

    @classmethod
    def open(cls, uri: str | Path, create: bool = False) -> Store:
        """Open the store at `uri`; with create, make it when the place is absent or empty."""
        text = str(uri)
        scheme, sep, rest = text.partition("://")
        if sep and scheme.lower() in ("s3", "gs", "gcs") and not rest.split("/", 1)[0].split("?", 1)[0]:
            raise StoreError(f"store '{text}' names no bucket: give {scheme}://BUCKET/PATH")
        if not text.strip():
            raise StoreError("--store is empty: give a folder or a URI such as s3://BUCKET/PATH")
        try:
            fs, root = pafs.FileSystem.from_uri(text if "://" in text else str(Path(text).absolute()))
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
        if kind == pafs.FileType.Directory and fs.get_file_info(pafs.FileSelector(root)):
            raise StoreError(f"'{text}' is a folder that is not empty and not a rethink store; choose another --store")
        with os_errors("create the store", f"'{text}'"):  # the first write: a path that cannot be a store
            store.write(MARKER, json.dumps({"rethink_store": 1, "created": now().isoformat()}).encode())
        return store

    # -- files ----------------------------------------------------------------------------------

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def _info(self, full: str) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(full)
        except OSError as exc:
            raise StoreError(f"cannot read store '{self.uri}': {' '.join(str(exc).split())}") from None

    def exists(self, relative: str) -> bool:
        return self._info(self.path(relative)).type == pafs.FileType.File

    def write(self, relative: str, data: bytes) -> None:
        if self.local:
            write_bytes(self.path(relative), data)
            return
        full = self.path(relative)
        tmp = f"{full}.{uuid.uuid4().hex}.tmp"
        self.fs.create_dir(full.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(tmp) as out:
            out.write(data)
        self.fs.move(tmp, full)

    def read(self, relative: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(self.path(relative)) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def delete(self, relative: str) -> None:
        try:
            self.fs.delete_file(self.path(relative))
        except FileNotFoundError:
            pass

    def listdir(self, relative: str) -> list[str]:
        selector = pafs.FileSelector(self.path(relative), allow_not_found=True)
        return sorted(info.base_name for info in self.fs.get_file_info(selector))

    def write_table(self, relative: str, rows: list[dict], table_schema: pa.Schema) -> None:
        buffer = io.BytesIO()
        pq.write_table(schema.table(rows, table_schema), buffer)
        self.write(relative, buffer.getvalue())

    def read_table(self, relative: str) -> list[dict] | None:
        blob = self.read(relative)
        if blob is None:
            return None
        try:
            return pq.read_table(pa.BufferReader(blob)).to_pylist()
        except (pa.ArrowInvalid, OSError) as exc:
            raise DamagedFileError(f"{relative} is damaged: {' '.join(str(exc).split())}") from None

    # -- experiments ----------------------------------------------------------------------------

    def check_experiment(self, name: str, grid_text: str) -> bool:
        """True when the experiment is already saved with this grid; refuses another grid."""
        paths = ExperimentPaths(name)  # checks the name (layout.check_name)
        old = self.read(paths.grid)
        if old is None:
            return False
        if old.decode() != grid_text:
            raise StoreError(
                f"experiment '{name}' already exists in this store with a different grid; "
                f"rename it, or `rethink resume {name}` to finish the existing one"
            )
        return self.exists(paths.runs)

    def save_experiment(self, name: str, grid_text: str, rows: list[dict]) -> None:
        """Freeze an experiment's grid and run list; the same grid again is a no-op, a different
        grid under the same name is refused."""
        paths = ExperimentPaths(name)
        if self.check_experiment(name, grid_text):
            return
        self.write_table(paths.runs, rows, schema.EXPERIMENT_RUNS)
        self.write(paths.grid, grid_text.encode())

    def experiments(self) -> list[str]:
        return [n.split("=", 1)[1] for n in self.listdir("experiments") if n.startswith("name=")]

    def experiment_grid(self, name: str) -> str:
        blob = self.read(ExperimentPaths(name).grid)
        if blob is None:
            known = ", ".join(self.experiments()) or "none yet"
            raise StoreError(f"no experiment '{name}' in store '{self.uri}' (experiments: {known})")
        return blob.decode()

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

    # -- claims: who trains a run ---------------------------------------------------------------

    def claim(self, run_id: str, token: str) -> int | None:
        """Take the run for this task (identified by `token`). Returns the attempt number, or None
        when another live owner holds it. A claim is stale when its owner's process is gone (same
        host), when it carries our own token (Ray retried this task), or after CLAIM_TIMEOUT_S
        without a heartbeat."""
        paths = RunPaths(run_id)
        attempts = [a for a in map(attempt_of, self.listdir(paths.claims)) if a is not None]
        current = max(attempts, default=0)
        if current and not self._stale(paths.claim(current), token):
            return None
        attempt = current + 1
        owner = {"token": token, "host": socket.gethostname(), "pid": os.getpid(), "at": now().isoformat()}
        if not self._create_exclusive(paths.claim(attempt), json.dumps(owner).encode()):
            return None  # someone else took this attempt number first
        return attempt

    def owns(self, run_id: str, attempt: int) -> bool:
        """True while no later attempt has taken the run over; refreshes the heartbeat."""
        paths = RunPaths(run_id)
        later = [a for a in map(attempt_of, self.listdir(paths.claims)) if a is not None and a > attempt]
        if later:
            return False
        if self.local:
            os.utime(self.path(paths.claim(attempt)))
        return True

    def release(self, run_id: str, attempt: int) -> None:
        """Mark the run's claim as given up (done, failed or cancelled), keeping its number."""
        relative = RunPaths(run_id).claim(attempt)
        self.write(relative, json.dumps(self._read_claim(relative) | {"released": now().isoformat()}).encode())

    def newest_claim(self, run_id: str) -> tuple[int, dict] | None:
        """The run's highest attempt and what its claim says ({} when damaged), live or not."""
        paths = RunPaths(run_id)
        attempts = [a for a in map(attempt_of, self.listdir(paths.claims)) if a is not None]
        if not attempts:
            return None
        return max(attempts), self._read_claim(paths.claim(max(attempts)))

    def _read_claim(self, relative: str) -> dict:
        """A claim's content; a damaged one reads as empty (stale: anyone may take the run)."""
        try:
            owner = json.loads(self.read(relative) or b"{}")
        except ValueError:
            return {}
        return owner if isinstance(owner, dict) else {}

    def claim_holder(self, run_id: str) -> dict | None:
        """The live owner of the run, if any (for waiting on runs another process trains)."""
        paths = RunPaths(run_id)
        attempts = [a for a in map(attempt_of, self.listdir(paths.claims)) if a is not None]
        if not attempts or self._stale(paths.claim(max(attempts)), token=None):
            return None
        return self._read_claim(paths.claim(max(attempts)))

    def _stale(self, relative: str, token: str | None) -> bool:
        owner = self._read_claim(relative)
        if not owner:  # damaged or empty: nobody can be shown to hold it
            return True
        if owner.get("released") or (token is not None and owner.get("token") == token):
            return True
        if owner.get("host") == socket.gethostname() and not _alive(int(owner.get("pid", 0))):
            return True
        info = self._info(self.path(relative))
        mtime = info.mtime.timestamp() if info.mtime else 0.0
        return time.time() - mtime > CLAIM_TIMEOUT_S

    def _create_exclusive(self, relative: str, data: bytes) -> bool:
        full = self.path(relative)
        if not self.local:  # object stores have no exclusive create: check, then write
            if self.exists(relative):
                return False
            self.write(relative, data)
            return True
        Path(full).parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(full, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

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
            with self.fs.open_input_file(self.path(relative)) as f:
                return pq.ParquetFile(f).metadata.num_rows
        except (DamagedFileError, pa.ArrowInvalid, OSError):
            return None

    def _file_schema(self, relative: str) -> pa.Schema | None:
        try:
            with self.fs.open_input_file(self.path(relative)) as f:
                return pq.ParquetFile(f).schema_arrow
        except FileNotFoundError:
            return None
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


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
