"""The one root of every error a user may cause; cli.py turns it into one line and exit code."""


class RethinkError(Exception):
    """A problem the user can fix: bad option, bad grid, missing data, bad SQL."""

    exit_code = 1


class SpecError(RethinkError):
    """A run, grid or command-line option that does not describe a valid run."""

    exit_code = 2


class DataError(RethinkError):
    """A dataset that cannot be found, downloaded or read."""
