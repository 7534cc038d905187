"""User mistakes: the one exception type for them, the context manager through which every CLI
reports one (its message on one line, exit status 2), and the CLIs' flag parsing, which reports a
flag that does not parse the same way."""

import contextlib
import sys
from typing import Iterator, NoReturn

from absl import flags


class UserError(ValueError):
  """Bad input from the user (a flag, a file); the message names it and says what would fix it."""


def parse_flags(argv: list[str]) -> list[str]:
  """The CLIs' flag parsing (``app.run(main, flags_parser=errors.parse_flags)``): a flag that
  cannot be parsed (an unknown name, a value of the wrong type or out of bounds, a --flagfile
  that cannot be read, a required one missing) or an argument that is not a flag is reported like
  every other user mistake, in one ``error:`` line with exit status 2 (absl's own parser prints
  two lines and exits 1; absl's app prints the whole help before an unexpected argument)."""
  rest = parse_flags_and_arguments(argv)
  if len(rest) > 1:
    _exit(f'unexpected arguments: {" ".join(rest[1:])}: give each flag as --name=value '
          '(see --help)')
  return rest


def parse_flags_and_arguments(argv: list[str]) -> list[str]:
  """``parse_flags`` for a command that takes arguments after its flags (``gemma_mt.launch``:
  the training flags after ``--``); returns ``[program, *arguments]``."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _exit(' '.join(str(e).removeprefix('ERROR:: ').split()) + ' (see --help)')


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
  """Around a CLI's work: a UserError raised inside becomes one ``error:`` line on stderr and
  exit status 2, the same as a flag that does not parse; any other exception propagates."""
  try:
    yield
  except UserError as e:
    _exit(str(e))


def _exit(message: str) -> NoReturn:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)
