"""The one exception type for problems the user can fix (bad input, bad config, missing files).

The CLI and the workflow scripts print its message alone, without a traceback, so every
message must name the file (or config key) and say what to do about it.
"""


class AsdError(Exception):
    """A user-fixable problem; the message names the file or key and the fix."""
