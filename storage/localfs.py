"""Every file operation on a local store, none of which follows a symbolic link below its root.

Whoever can write a shared store (a shared filesystem, a bucket mounted by FUSE) could replace
`epochs/run_id=ID` with a link to any folder and have every worker write or delete there. So a
path below the root is never handed to the OS whole: it is walked one name at a time with folder
descriptors opened `O_NOFOLLOW | O_DIRECTORY` relative to the one before (`dir_fd`), and the
last name is opened, created (`O_EXCL | O_NOFOLLOW`), renamed, linked or unlinked relative to
its folder's descriptor. The walk itself is the guard, not a check made before acting: a link
swapped in at any moment is refused by the open that meets it. The root itself may be a link
(the user chose it). A link met is a `StoreLinkError` naming its store-relative path; any other
OSError passes through (Store words it).

Paths here are store-relative, "/"-separated, as storage/layout.py makes them."""

from __future__ import annotations

import errno
import os
import stat
import uuid
from contextlib import contextmanager
from typing import BinaryIO, Iterator

from rethink.storage.errors import StoreError
from rethink.text import one_line

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted in the store returns at once (then refused: not a regular file).
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class StoreLinkError(StoreError):
    """A symbolic link inside a store: rethink never follows one."""


class NotRegularError(StoreError):
    """A store path that holds a folder, device, pipe or socket where a file belongs."""


class LocalStore:
    """The file operations of one local store folder (`root`); `uri` names it in messages."""

    def __init__(self, root: str, uri: str):
        self.root, self.uri = root, uri

    # -- the walk --------------------------------------------------------------------------------

    @contextmanager
    def folder(self, relative: str, create: bool = False) -> Iterator[int | None]:
        """A descriptor of the folder `relative` (no link followed below the root), closed after;
        None when it is absent and not `create`d (made 0755 one name at a time)."""
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the root may be a link
        except FileNotFoundError:
            if not create:
                yield None
                return
            os.makedirs(self.root, exist_ok=True)  # a new store: the user chose this path
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            done: list[str] = []
            for name in _names(relative):
                try:
                    child = self._open_dir(fd, name, done, create)
                except FileNotFoundError:
                    if not create:
                        yield None
                        return
                    raise
                os.close(fd)
                fd = child
                done.append(name)
            yield fd
        finally:
            os.close(fd)

    def _open_dir(self, fd: int, name: str, done: list[str], create: bool) -> int:
        for _ in range(2):
            try:
                return os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass  # made by another writer just now, or a dangling link: the open says which
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                    self._refuse_link(fd, name, done)
                raise
        return os.open(name, _DIR_FLAGS, dir_fd=fd)

    def _refuse_link(self, fd: int, name: str, done: list[str]) -> None:
        """Raise StoreLinkError when `name` in folder `fd` is a symbolic link; else return."""
        try:
            if not stat.S_ISLNK(os.lstat(name, dir_fd=fd).st_mode):
                return
            target = os.readlink(name, dir_fd=fd)
        except OSError:
            return
        where = "/".join([*done, name])
        raise StoreLinkError(
            f"store '{self.uri}' holds a symbolic link at {one_line(where)} (→ {one_line(target)}); "
            "rethink never follows links inside a store: remove it")

    def _split(self, relative: str) -> tuple[str, str, list[str]]:
        names = _names(relative)
        if not names:
            raise ValueError(f"not a file path in a store: {relative!r}")
        return "/".join(names[:-1]), names[-1], names[:-1]

    # -- files -----------------------------------------------------------------------------------

    def open_read(self, relative: str) -> tuple[BinaryIO, int] | None:
        """The regular file `relative` open for reading (the caller closes it) and its size;
        None when it is absent."""
        parent, name, done = self._split(relative)
        with self.folder(parent) as fd:
            if fd is None:
                return None
            try:
                file_fd = os.open(name, _READ_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                return None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    self._refuse_link(fd, name, done)
                raise
        f = os.fdopen(file_fd, "rb")
        info = os.fstat(file_fd)
        if not stat.S_ISREG(info.st_mode):
            f.close()
            raise NotRegularError(f"store '{self.uri}' holds a folder, device, pipe or socket at "
                                  f"{one_line(relative)}, where rethink keeps a file; remove it")
        os.set_blocking(file_fd, True)
        return f, info.st_size

    def write(self, relative: str, data: bytes) -> None:
        """Replace the file whole: a temporary file in its folder, fsync, then a rename."""
        parent, name, done = self._split(relative)
        with self.folder(parent, create=True) as fd:
            assert fd is not None
            tmp = self._write_temp(fd, name, data)
            try:
                self._refuse_link(fd, name, done)  # a rename would replace the link, not follow it
                os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
            except BaseException:
                _unlink_quietly(fd, tmp)
                raise

    def create_exclusive(self, relative: str, data: bytes) -> bool:
        """Create the file with `data` only when nothing is there; True for the one caller that
        did. The whole file is hard-linked into place, so a reader never sees it empty or half
        written; where hard links are not supported, O_EXCL writes it in place."""
        parent, name, _ = self._split(relative)
        with self.folder(parent, create=True) as fd:
            assert fd is not None
            tmp = self._write_temp(fd, name, data)
            try:
                try:
                    os.link(tmp, name, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
                    return True
                except FileExistsError:
                    return False
                except OSError as exc:
                    if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                        raise
                try:
                    out = os.open(name, _NEW_FLAGS, 0o644, dir_fd=fd)
                except FileExistsError:
                    return False
                with os.fdopen(out, "wb") as f:
                    f.write(data)
                return True
            finally:
                _unlink_quietly(fd, tmp)

    def _write_temp(self, fd: int, name: str, data: bytes) -> str:
        """A new file `.<name>.<random>.tmp` in folder `fd` holding `data`, synced; its name."""
        tmp = f".{name[:100]}.{uuid.uuid4().hex}.tmp"
        out = os.open(tmp, _NEW_FLAGS, 0o644, dir_fd=fd)
        try:
            with os.fdopen(out, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            _unlink_quietly(fd, tmp)
            raise
        return tmp

    def delete(self, relative: str) -> None:
        """Remove the file (a link there is removed itself, never what it points to)."""
        parent, name, _ = self._split(relative)
        with self.folder(parent) as fd:
            if fd is not None:
                try:
                    os.unlink(name, dir_fd=fd)
                except FileNotFoundError:
                    pass

    def rename(self, relative: str, new_name: str) -> bool:
        """Rename the file to `new_name` in its folder; False when it is absent."""
        parent, name, _ = self._split(relative)
        with self.folder(parent) as fd:
            if fd is None:
                return False
            try:
                os.rename(name, new_name, src_dir_fd=fd, dst_dir_fd=fd)
            except FileNotFoundError:
                return False
            return True

    def link(self, relative: str, new_name: str) -> bool:
        """Hard-link the file as `new_name` in its folder; False when `new_name` exists."""
        parent, name, _ = self._split(relative)
        with self.folder(parent) as fd:
            if fd is None:
                return False
            try:
                os.link(name, new_name, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
            except FileExistsError:
                return False
            return True

    def stat(self, relative: str) -> os.stat_result | None:
        """The entry's own status (a link's, never its target's); None when it is absent."""
        parent, name, _ = self._split(relative)
        with self.folder(parent) as fd:
            if fd is None:
                return None
            try:
                return os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return None

    def is_file(self, relative: str) -> bool:
        """True for a regular file; a link there is refused (StoreLinkError)."""
        parent, name, done = self._split(relative)
        with self.folder(parent) as fd:
            if fd is None:
                return False
            self._refuse_link(fd, name, done)
            try:
                return stat.S_ISREG(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
            except FileNotFoundError:
                return False

    def touch(self, relative: str) -> None:
        """Set the file's mtime to now (a link's own, never its target's)."""
        parent, name, _ = self._split(relative)
        with self.folder(parent) as fd:
            if fd is None:
                raise FileNotFoundError(errno.ENOENT, "no such file", relative)
            os.utime(name, dir_fd=fd, follow_symlinks=False)

    def listdir(self, relative: str, links: bool = True) -> list[str]:
        """The names in folder `relative`, sorted; [] when it is absent. `links=False`: a link
        among them is refused (StoreLinkError), for a listing handed to a reader that follows
        links (DuckDB's own file reads)."""
        with self.folder(relative) as fd:
            if fd is None:
                return []
            if links:
                return sorted(os.listdir(fd))
            names = []
            with os.scandir(fd) as entries:  # the entry types come with the listing: no stat each
                for entry in entries:
                    if entry.is_symlink():
                        self._refuse_link(fd, entry.name, _names(relative))
                    names.append(entry.name)
            return sorted(names)

    def rmdir(self, relative: str) -> None:
        """Remove the folder `relative` if it is empty now; quietly leave it otherwise."""
        parent, name, _ = self._split(relative)
        with self.folder(parent) as fd:
            if fd is not None:
                try:
                    os.rmdir(name, dir_fd=fd)
                except OSError:
                    pass  # not empty (claims, a new file), gone, or a link (never removed through)


def _names(relative: str) -> list[str]:
    """The names of a store-relative path; '..' or an absolute path is a programming error."""
    names = [n for n in relative.split("/") if n not in ("", ".")]
    if ".." in names or relative.startswith("/"):
        raise ValueError(f"not a path inside a store: {relative!r}")
    return names


def _unlink_quietly(fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        pass
