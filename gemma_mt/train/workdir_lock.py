"""One training job per workdir: an advisory lock that process 0 holds while the job runs.

A second job started on the same ``--workdir`` (a command run twice, a retry while the first
attempt still runs) would open the same checkpoints: its opening removes the unfinished save
the first job is writing, and both would save steps and append metrics into one run. The lock
is ``flock`` on ``WORKDIR/.gemma_mt.lock``; the kernel releases it when the holder exits, however
it ends (SIGKILL, out of memory, a preempted host), so nothing stale is left to clear by hand.
Readers (translate, evaluate, export) take no lock: they read a workdir while its job trains.
On a file system without ``flock`` the job runs unlocked, with a warning.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import time

import jax

from gemma_mt.train import distributed
from gemma_mt.train.config import ConfigError

_LOG = logging.getLogger(__name__)
LOCK_FILE = '.gemma_mt.lock'
# errno values of a file system that does not support flock: the job runs unlocked.
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class WorkdirBusyError(ConfigError):
  """Another job holds the workdir's lock; this one wrote nothing there."""


class WorkdirLock:
  """The lock of ``workdir``: ``acquire()`` once the directory exists; ``release()`` at the end.

  Every process of a job calls both: process 0 takes the lock and the others learn its outcome,
  so that a refused job stops in every process with the same error.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    self._file = None
    self._acquired = False

  @property
  def acquired(self) -> bool:
    return self._acquired

  def acquire(self) -> None:
    """Takes the lock (a no-op if taken); raises WorkdirBusyError if another job holds it."""
    if self._acquired:
      return
    holder, failure = '', None
    if jax.process_index() == 0:
      try:
        holder = self._try_lock()
      except OSError as e:
        failure = e
    # 0: locked; 1: another job holds it; 2: the lock file cannot be opened.
    outcome = distributed.agreed_max(2 if failure else int(bool(holder)))
    workdir = os.path.dirname(self.path)
    if outcome == 2:
      raise ConfigError(f'--workdir={workdir}: cannot open {LOCK_FILE} '
                        f'({failure.strerror if failure else "on process 0"}): fix its '
                        'permissions or use another --workdir')
    if outcome == 1:
      raise WorkdirBusyError(
          f'--workdir={workdir} is in use by another training job '
          f'({holder or "see process 0"}): wait for it to end, or use another --workdir')
    self._acquired = True

  def _try_lock(self) -> str:
    """Process 0: '' once locked (or where locks are unsupported), else who holds it."""
    f = open(self.path, 'a+', encoding='utf-8')  # pylint: disable=consider-using-with
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or 'its process id is not recorded'
      f.close()
      return holder
    except OSError as e:
      f.close()
      if e.errno not in _UNSUPPORTED:
        raise
      _LOG.warning('%s cannot be locked (%s): nothing stops a second job on this workdir',
                   self.path, e.strerror)
      return ''
    f.seek(0)
    f.truncate()
    f.write(f'pid {os.getpid()} on {socket.gethostname()} since '
            f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n')
    f.flush()
    self._file = f
    return ''

  def release(self) -> None:
    """Lets the next job in (the file stays; its content names the last holder)."""
    if self._file is not None:
      self._file.close()  # closing releases the flock
      self._file = None
    self._acquired = False
