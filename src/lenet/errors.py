"""The project's exceptions and the one place that maps them to exit codes.

Every failure a user can cause or meet is one of these; ``cli.main`` turns them
into a message on stderr and the exit code below, never a traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # runtime failure: divergence, an unusable run or model file, I/O
EXIT_USAGE = 2  # bad command line, bad config value, impossible architecture
EXIT_CLUSTER = 3  # Ray missing, no cluster at the address, token refused, storage not shared
EXIT_DATA = 4  # the data or a picture: missing, corrupt, or not what it claims to be (fix the input, not the run)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell convention


class LenetError(Exception):
    """Base class: a failure with a message meant for the user."""

    exit_code = EXIT_FAILURE


class DataError(LenetError):
    """Data missing, corrupt, or not what it claims to be."""

    exit_code = EXIT_DATA


class ConfigError(LenetError):
    """A config value, file or architecture that cannot work."""

    exit_code = EXIT_USAGE


class UsageError(LenetError):
    """A command line that names something that does not exist."""

    exit_code = EXIT_USAGE


class DivergedError(LenetError):
    """The loss became NaN or infinite."""

    exit_code = EXIT_FAILURE


class RunError(LenetError):
    """A run directory or model file problem (exists, unwritable, not a model)."""

    exit_code = EXIT_FAILURE


class RunBusy(RunError):
    """Another lenet process holds the run directory's lock (it is training it now)."""


class ClusterError(LenetError):
    """Ray is not installed, the cluster cannot be reached or refuses us, or its nodes
    cannot all see the output folder."""

    exit_code = EXIT_CLUSTER


class Interrupted(LenetError):
    """The user pressed Ctrl-C (or sent SIGINT); state was saved first."""

    exit_code = EXIT_INTERRUPTED
