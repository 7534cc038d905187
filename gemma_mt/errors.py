"""The one exception type for user mistakes: the CLIs print its message on one line, exit 2."""


class UserError(ValueError):
  """Bad input from the user (a flag, a file); the message names it and says what would fix it."""
