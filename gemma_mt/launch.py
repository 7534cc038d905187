"""``python -m gemma_mt.launch --num_processes=P [--cpu_devices_per_process=N] -- <train flags>``.

Runs a P-process training job on this machine, as a cluster scheduler would run it on P hosts:
each process is ``python -m gemma_mt.train`` with JAX's own coordinator flags (process 0 serves
the coordinator on a free loopback port). Process 0's output is passed through; the others'
lines are prefixed with ``[process i]``. The exit status is 0 only if every process succeeded;
when one fails, the others are given ``--grace_seconds`` to stop on their own, then killed. A
launcher killed outright (SIGKILL, the OOM killer) takes its processes with it on Linux, so that
none is left training, holding devices or saving into the run's checkpoints.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

from absl import app
from absl import flags

from gemma_mt import errors


def free_loopback_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def process_command(train_args: Sequence[str], *, port: int, num_processes: int,
                    process_id: int, cpu_devices_per_process: int) -> list[str]:
  """The command line of one process of the job."""
  command = [sys.executable, '-m', 'gemma_mt.train', *train_args,
             f'--coordinator_address=127.0.0.1:{port}', f'--num_processes={num_processes}',
             f'--process_id={process_id}']
  if cpu_devices_per_process:
    command.append(f'--cpu_devices_per_process={cpu_devices_per_process}')
  return command


# prctl(2): the signal a process gets when the thread that started it ends.
_PR_SET_PDEATHSIG = 1


def _killed_with_launcher() -> Callable[[], None] | None:
  """A ``preexec_fn`` that has the process killed when the launcher dies; None off Linux."""
  if not sys.platform.startswith('linux'):
    return None
  # Looked up here, not in the forked child, where only async-signal-safe calls are sound.
  prctl = ctypes.CDLL(None, use_errno=True).prctl
  launcher = os.getpid()

  def preexec() -> None:
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != launcher:  # the launcher died before prctl took effect
      os._exit(1)  # pylint: disable=protected-access

  return preexec


def _pump(stream, out, prefix: str) -> None:
  for line in iter(stream.readline, ''):
    out.write(prefix + line)
    out.flush()


def launch(train_args: Sequence[str], *, num_processes: int, cpu_devices_per_process: int = 0,
           grace_seconds: float = 60.0) -> int:
  """Runs the job; returns 0 if every process succeeded, else 1 (each failure is printed).

  SIGTERM and SIGINT are passed on to every process as SIGTERM, JAX's preemption notice: they
  agree on one step, save it and exit 0. (A Ctrl-C in a terminal also reaches the processes
  directly, as SIGINT, which they turn into the same notice; a second Ctrl-C stops at once.)
  """
  port = free_loopback_port()
  preexec = _killed_with_launcher()
  # Every process is started before the first output thread: a preexec_fn runs in the forked
  # child, which must not inherit other threads' locks.
  procs = [
      subprocess.Popen(
          process_command(train_args, port=port, num_processes=num_processes, process_id=i,
                          cpu_devices_per_process=cpu_devices_per_process),
          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
          preexec_fn=preexec)
      for i in range(num_processes)]
  pumps = []
  for i, proc in enumerate(procs):
    prefix = '' if i == 0 else f'[process {i}] '
    for stream, out in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr)):
      pump = threading.Thread(target=_pump, args=(stream, out, prefix), daemon=True)
      pump.start()
      pumps.append(pump)

  def forward(_signum, _frame):
    for proc in procs:
      if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)

  previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    failed_at = None
    while any(p.poll() is None for p in procs):
      if failed_at is None and any(p.poll() not in (None, 0) for p in procs):
        failed_at = time.monotonic()
      if failed_at is not None and time.monotonic() - failed_at > grace_seconds:
        for p in procs:
          if p.poll() is None:
            p.kill()
      time.sleep(0.2)
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  for pump in pumps:
    pump.join(timeout=5)
  statuses = [p.returncode for p in procs]
  for i, status in enumerate(statuses):
    if status != 0:
      print(f'error: process {i} of {num_processes} exited with status {status}',
            file=sys.stderr)
  return 1 if any(statuses) else 0


def define_flags() -> None:
  flags.DEFINE_integer('num_processes', None, 'Processes of the job (as if on that many hosts).',
                       lower_bound=1)
  flags.DEFINE_integer('cpu_devices_per_process', 0,
                       'Simulated CPU devices per process (0: the real accelerators).',
                       lower_bound=0)
  flags.DEFINE_float('grace_seconds', 60.0,
                     'After one process fails, wait this long for the others, then kill them.')
  flags.mark_flag_as_required('num_processes')


def main(argv: list[str]) -> int:
  """``argv[1:]``: the flags of ``python -m gemma_mt.train``, after ``--``."""
  return launch(argv[1:], num_processes=flags.FLAGS.num_processes,
                cpu_devices_per_process=flags.FLAGS.cpu_devices_per_process,
                grace_seconds=flags.FLAGS.grace_seconds)


def run() -> None:
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=errors.parse_flags_and_arguments)


if __name__ == '__main__':
  run()
