"""The workdir lock (real flock on the file system). A second job refused while a real one trains:
tests/test_multiprocess.py (a job of one process and one of two, beside a job of two)."""

import errno
import fcntl
import logging
import os

import pytest

from gemma_mt.train import workdir_lock
from gemma_mt.train.config import ConfigError


def test_a_second_holder_is_refused_until_the_first_releases(tmp_path):
  first, second = workdir_lock.WorkdirLock(str(tmp_path)), workdir_lock.WorkdirLock(str(tmp_path))
  first.acquire()
  first.acquire()  # taken once, kept
  assert first.acquired
  with pytest.raises(workdir_lock.WorkdirBusyError,
                     match=rf'^--workdir={tmp_path} is in use by another training job '
                           rf'\(pid {os.getpid()} on .+ since .+\): wait for it to end'):
    second.acquire()
  assert not second.acquired
  first.release()
  second.acquire()
  assert second.acquired
  second.release()
  # The file stays and names its last holder; it is no lock once released.
  assert (tmp_path / workdir_lock.LOCK_FILE).read_text().startswith(f'pid {os.getpid()} on ')
  with open(tmp_path / workdir_lock.LOCK_FILE, encoding='utf-8') as f:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_file_system_without_flock_runs_unlocked_with_a_warning(tmp_path, monkeypatch,
                                                                  caplog):
  def no_locks(*_):
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

  monkeypatch.setattr(workdir_lock.fcntl, 'flock', no_locks)
  with caplog.at_level(logging.WARNING, logger=workdir_lock.__name__):
    lock = workdir_lock.WorkdirLock(str(tmp_path))
    lock.acquire()
  assert lock.acquired
  assert 'cannot be locked (No locks available): nothing stops a second job' in caplog.text
  lock.release()


def test_an_unopenable_lock_file_is_one_line_naming_it(tmp_path):
  (tmp_path / workdir_lock.LOCK_FILE).mkdir()
  with pytest.raises(ConfigError, match=rf'^--workdir={tmp_path}: cannot open \.gemma_mt\.lock '
                                        r'\(Is a directory\): fix its permissions or use another'):
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()
