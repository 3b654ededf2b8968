"""One exception type for problems a user can fix; the CLI prints its message, never a traceback."""


class MuffinError(Exception):
    """A clear, actionable error: say which file or setting is wrong, what is wrong, and what to do."""
