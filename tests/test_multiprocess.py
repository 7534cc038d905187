"""Multi-process jobs on one machine: real `jax.distributed` processes started by the launcher."""

import json
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from conftest import REPO, readme_bash_block, subprocess_env
from test_checkpoint import _complete_steps, _reported_step, _wait_for

# The demo's flagfile first, as README's launch command uses it; then flags that override it
# (absl: the last value wins), with a constant rate so that a run stopped by a smaller
# --max_steps follows the same schedule.
FLAGFILE = '--flagfile=configs/demo.flags'
FLAGS = ['--batch_size=16', '--eval_batch_size=16',
         '--log_every_n=1', '--eval_every_n=100', '--save_every_n=3', '--num_translations=0',
         '--bleu_examples=0', '--lr_schedule=constant', '--warmup_steps=0']


# The last leg of a job also translates: BLEU of 16 pairs and 4 sample translations at its end.
TRANSLATE = ['--bleu_examples=16', '--num_translations=4']


def _single(workdir, steps: int, *extra: str) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, '-m', 'gemma_mt.train', FLAGFILE, f'--workdir={workdir}',
       f'--max_steps={steps}', '--cpu_devices_per_process=8', *FLAGS, *extra],
      cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)


def _launch_command(workdir, steps: int, *extra: str) -> list[str]:
  return [sys.executable, '-m', 'gemma_mt.launch', '--num_processes=2',
          '--cpu_devices_per_process=4', '--', FLAGFILE, f'--workdir={workdir}',
          f'--max_steps={steps}', *FLAGS, *extra]


def _launch(workdir, steps: int, *extra: str) -> subprocess.CompletedProcess:
  return subprocess.run(_launch_command(workdir, steps, *extra), cwd=REPO, env=subprocess_env(),
                        capture_output=True, text=True, timeout=300)


def _losses(workdir) -> list[float]:
  lines = (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()
  return [m['train_loss'] for m in map(json.loads, lines) if 'train_loss' in m]


@pytest.fixture(scope='module')
def one_process_reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('one_process')
  done = _single(workdir, 10, *TRANSLATE)
  assert done.returncode == 0, done.stderr[-3000:]
  return _losses(workdir), _translation_report(done.stdout)


def _translation_report(stdout: str) -> str:
  """The end of a run's report: validation BLEU and chrF++, then the sample translations."""
  return stdout[stdout.index('validation BLEU'):]


def test_checkpoints_move_between_two_processes_and_one(one_process_reference, tmp_path):
  """2 processes → 1 process → 2 processes, one run: every leg resumes where the last stopped,
  and the losses are the one-process run's (2 × 4 devices == 1 × 8); so are the BLEU and the
  translations of the last leg, each process decoding its rows of every batch."""
  # The first leg is README's launch command as written, shortened and pointed at tmp_path.
  readme_launch = ' '.join(readme_bash_block('gemma_mt.launch').replace('\\\n', ' ').split())
  assert readme_launch.startswith('.venv/bin/python -m gemma_mt.launch --num_processes=2 '
                                  f'--cpu_devices_per_process=4 -- {FLAGFILE}')
  done = subprocess.run(['bash', '-c', ' '.join([readme_launch, *FLAGS, '--max_steps=3',
                                                 f'--workdir={tmp_path}'])],
                        cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert '[process 1]' in done.stderr and 'final eval_loss' in done.stdout
  assert done.stdout.count('final eval_loss') == 1  # only process 0 reports
  # Unpacked runs resume from the example count alone: no Grain state is saved beside it.
  assert (tmp_path / 'checkpoints' / '3' / 'meta').is_dir()
  assert not (tmp_path / 'checkpoints' / '3' / 'data').exists()
  done = _single(tmp_path, 6)
  assert done.returncode == 0 and 'resumed from' in done.stderr, done.stderr[-3000:]
  # The latest checkpoint damaged: both processes agree to set it aside and resume from step 3.
  for f in (tmp_path / 'checkpoints' / '6' / 'state').rglob('*'):
    if f.is_file() and f.stat().st_size > 0 and 'commit' not in f.name:
      f.write_bytes(b'garbage')
  done = _launch(tmp_path, 10, *TRANSLATE)
  assert done.returncode == 0, done.stderr[-3000:]
  resumed = [l for l in done.stderr.splitlines() if 'resumed from' in l]
  assert len(resumed) == 2 and all(l.endswith('at step 3') for l in resumed), resumed
  assert sum('checkpoint 6 in' in l and 'is damaged' in l for l in done.stderr.splitlines()) == 2
  assert len(list((tmp_path / 'checkpoints').glob('6.unreadable-*'))) == 1
  losses, translations = one_process_reference
  np.testing.assert_allclose(_losses(tmp_path), losses, rtol=1e-5)
  assert _translation_report(done.stdout) == translations
  assert translations.count('  en: ') == 4 and 'on 16 pairs' in translations


def _wait_for_step(workdir, step, proc) -> None:
  assert _wait_for(lambda: _reported_step(workdir) >= step, proc), 'the job ended early'


def _process_1(proc: subprocess.Popen) -> psutil.Process:
  return next(c for c in psutil.Process(proc.pid).children()
              if '--process_id=1' in ' '.join(c.cmdline()))


def _resumed_step(stderr: str) -> list[int]:
  return [int(l.rsplit('at step ', 1)[1]) for l in stderr.splitlines() if 'resumed from' in l]


def test_ctrl_c_or_a_killed_process_stops_the_job_and_it_resumes(tmp_path):
  """One job (LoRA on an int8 base: 2 processes × 4 devices, each reading its shards of the
  base), stopped twice and resumed each time; while it trains, the workdir is refused to a second
  job. SIGINT (Ctrl-C) to a single process becomes JAX's preemption notice (SIGTERM, what the
  launcher passes on to every process and a scheduler sends), which the job shares: all stop at
  one agreed step, save it and exit 0. The same command resumes there on 2 processes; SIGKILL
  to one of them ends the job within the heartbeat timeout. The same command on one process of
  8 devices reads the base again and goes on from the last checkpoint."""
  lora = ['--lora_rank=4', '--base_quantization=int8']
  # A short heartbeat: the survivor notices within it (the default, 20 s, works the same way).
  command = _launch_command(tmp_path, 400, *lora) + ['--heartbeat_timeout_seconds=5']
  proc = subprocess.Popen(command, cwd=REPO, env=subprocess_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  _wait_for_step(tmp_path, 4, proc)
  # While it trains, the same workdir is refused to another job of one process or of two (the
  # lock's holder, process 0, answers for both of its processes): one line and exit status 2
  # from each process (the launcher's status is 1: a process failed).
  busy = f'error: --workdir={tmp_path} is in use by another training job (pid '
  done = _single(tmp_path, 400, *lora)
  assert done.returncode == 2 and done.stderr.startswith(busy), done.stderr[-3000:]
  assert done.stderr.count('\n') == 1
  done = _launch(tmp_path, 400, *lora)
  assert done.returncode == 1 and 'exited with status 2' in done.stderr, done.stderr[-3000:]
  lines = [l for l in done.stderr.splitlines() if 'in use by another training job' in l]
  assert len(lines) == 2 and sum(l.startswith(busy) for l in lines) == 1, lines
  assert (f'[process 1] error: --workdir={tmp_path} is in use by another training job (see '
          'process 0): wait for it to end, or use another --workdir') in lines
  assert proc.poll() is None, 'the job ended before the refused ones'
  _process_1(proc).send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 0, stderr[-3000:]
  lines = [l for l in stderr.splitlines() if 'stopping on' in l]
  assert len(lines) == 2  # process 0 and process 1
  steps = {int(l.split('checkpoint at step ')[1].split(';')[0]) for l in lines}
  assert len(steps) == 1
  step = steps.pop()
  assert (tmp_path / 'checkpoints' / str(step)).is_dir() and step < 400

  proc = subprocess.Popen(command, cwd=REPO, env=subprocess_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  _wait_for_step(tmp_path, step + 4, proc)
  # It saves every 3 steps: one is done or being written.
  assert _wait_for(lambda: max(_complete_steps(tmp_path)) > step, proc, timeout=120), \
      'the job ended before a save after the resume'
  _process_1(proc).send_signal(signal.SIGKILL)
  killed_at = time.monotonic()
  _, stderr = proc.communicate(timeout=120)
  assert time.monotonic() - killed_at < 30
  assert proc.returncode != 0
  assert _resumed_step(stderr) == [step, step], stderr[-3000:]  # both processes
  assert 'error: process 1 of 2 exited with status -9' in stderr
  last = max(_complete_steps(tmp_path))

  done = _single(tmp_path, last + 3, *lora)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f'resumed from {tmp_path / "checkpoints"} at step {last}' in done.stderr
  assert _reported_step(tmp_path) == last + 3


def test_a_killed_launcher_takes_its_processes_with_it(tmp_path):
  """SIGKILL to the launcher (what the OOM killer sends) cannot be passed on; its processes are
  killed with it instead of training on without it, into the same checkpoints. (Killed as soon
  as both run `gemma_mt.train`: what ties them to the launcher is set before they start.)"""
  proc = subprocess.Popen(_launch_command(tmp_path, 400), cwd=REPO, env=subprocess_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  children = []

  def started() -> bool:
    nonlocal children
    children = psutil.Process(proc.pid).children()
    return len(children) == 2 and all('gemma_mt.train' in c.cmdline() for c in children)

  try:
    assert _wait_for(started, proc, timeout=60)
    proc.kill()
    proc.wait()
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [c.cmdline()[-4:] for c in alive]
  finally:
    proc.kill()
    for child in children:
      if child.is_running():
        child.kill()


def test_slurm_script_signals_the_python_processes():
  script = (REPO / 'deploy' / 'slurm.sbatch').read_text()
  directives = [l for l in script.splitlines() if l.startswith('#SBATCH --signal')]
  # `B:` would signal only the batch shell; without it SLURM signals every job step's processes.
  assert directives == ['#SBATCH --signal=TERM@120']
  assert 'bash -c "exec .venv/bin/python -m gemma_mt.train' in script


def test_cluster_detection_and_coordinator_flags():
  from gemma_mt.train import distributed
  assert distributed.detected_cluster({}) is None
  assert distributed.detected_cluster({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '1'}) is None
  assert distributed.detected_cluster({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '4'}) == 'SLURM'
  assert distributed.detected_cluster(
      {'OMPI_COMM_WORLD_SIZE': '2', 'OMPI_COMM_WORLD_RANK': '1'}) == 'Open MPI'
  assert distributed.detected_cluster(
      {'KUBERNETES_SERVICE_HOST': '10.0.0.1', 'JOB_COMPLETION_INDEX': '0'}) == 'Kubernetes'
  with pytest.raises(distributed.DistributedError, match='go together'):
    distributed.DistributedOptions(coordinator_address='127.0.0.1:1234').validate()
  with pytest.raises(distributed.DistributedError, match='must be below'):
    distributed.DistributedOptions('127.0.0.1:1234', num_processes=2, process_id=2).validate()
  done = subprocess.run([sys.executable, '-m', 'gemma_mt.train', '--num_processes=2'], cwd=REPO,
                        env=subprocess_env(), capture_output=True, text=True, timeout=120)
  assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith(
      'error: --coordinator_address, --num_processes and --process_id go together')
