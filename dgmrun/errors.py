"""The one exception type for mistakes a user can fix (bad config, missing files, bad checkpoint).

The command line prints these as a short message and exits non-zero, without a traceback.
"""


class DgmrunError(Exception):
    """A problem with the user's input, described in words the user can act on."""
