"""The one exception type for mistakes a user can fix (bad config, missing files, bad checkpoint).

The command line prints these as a short message and exits non-zero, without a traceback; in a sweep,
the failed job is recorded and Hydra reports it compactly once every job has run.
"""

from hydra.errors import CompactHydraException


class DgmrunError(CompactHydraException):
    """A problem with the user's input, described in words the user can act on."""
