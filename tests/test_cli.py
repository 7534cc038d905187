"""``python -m gemma_mt.train`` as a user runs it: a shortened demo, bad input; in every command, --help
and flags that do not parse."""

import json
import re
import subprocess
import sys

import pytest

from conftest import REPO, subprocess_env, tensorboard_events, train_reporting_imports


def _train(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'gemma_mt.train', *args], cwd=REPO,
                        env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def test_shortened_demo_learns_and_writes_its_outputs(tmp_path):
  workdir = tmp_path / 'demo'
  done = train_reporting_imports(
      '--flagfile=configs/demo.flags', f'--workdir={workdir}', '--max_steps=80',
      '--warmup_steps=20', '--eval_every_n=20', '--save_every_n=40', '--num_translations=3',
      '--bleu_examples=100', timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  # Trained, evaluated, sampled and wrote TensorBoard events without TensorFlow (nor the Keras
  # and scikit-learn it imports): the command's first step, tensorflow_startup.set_environment.
  assert done.stdout.splitlines()[-1] == "HEAVY ['gemma', 'grain', 'jax']"
  metrics = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  evals = [m['eval_loss'] for m in metrics if 'eval_loss' in m]
  assert len(evals) == 4
  # Each evaluation lower than the one before; at the end far below a uniform guess (ln 1024).
  assert all(b < a for a, b in zip(evals, evals[1:])) and evals[-1] < 0.7 * evals[0] < 3.5, evals
  assert all(isinstance(m['step'], int) for m in metrics)
  events = tensorboard_events(workdir)
  assert [e.step for e in events.Tensors('eval_loss')] == [20, 40, 60, 80]
  texts = events.Tensors('translations')  # the sample translations, as TensorBoard text
  assert len(texts) == 1 and texts[0].tensor_proto.string_val[0].decode().count('en: ') == 3
  # BLEU and chrF++ of the validation split (--bleu_every_n=800 in the flagfile: the end only).
  scored = [m for m in metrics if 'eval_bleu' in m]
  assert [m['step'] for m in scored] == [80] and 0 < scored[0]['eval_chrf'] <= 100
  assert [e.step for e in events.Tensors('eval_bleu')] == [80]
  assert events.Tensors('eval_translations')
  assert 'validation BLEU' in done.stdout and 'on 100 pairs' in done.stdout
  # Every new best evaluation (20, 40, 60, 80 here) is saved too; the last two are kept.
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['60', '80']
  assert 'translations of held-out sentences:' in done.stdout
  assert done.stdout.count('  en: ') == 3
  assert 'step/s' in done.stderr  # the progress bar
  # Running the same command again resumes at the end: nothing more to train.
  again = _train('--flagfile=configs/demo.flags', f'--workdir={workdir}', '--max_steps=80',
                 '--warmup_steps=20', '--eval_every_n=20', '--save_every_n=40',
                 '--num_translations=0', '--bleu_examples=0')
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'resumed from' in again.stderr
  assert len((workdir / 'metrics.jsonl').read_text().splitlines()) == len(metrics)


@pytest.mark.parametrize('flag, message', [
    ('--model=gemma-99b', "error: --model='gemma-99b' is unknown"),
    ('--dataset=nowhere', "error: --dataset='nowhere' is not a known dataset"),
    ('--batch_size=0', 'error: --batch_size must be positive'),
    ('--max_seq_len=-5', 'error: --max_seq_len must be positive'),
    ('--max_seq_len=8', 'error: no train example of demo fits --max_seq_len=8'),
])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, flag, message):
  workdir = tmp_path / 'run'
  done = _train(f'--workdir={workdir}', flag, timeout=120)
  assert done.returncode == 2
  lines = [line for line in done.stderr.splitlines() if line.startswith('error:')]
  assert len(lines) == 1 and lines[0].startswith(message), done.stderr[-2000:]
  assert 'Traceback' not in done.stderr
  assert not workdir.exists()


def test_workdir_that_is_a_file(tmp_path):
  path = tmp_path / 'file'
  path.write_text('precious')
  done = _train(f'--workdir={path}', timeout=120)
  assert done.returncode == 2
  assert done.stderr.strip().splitlines()[-1].startswith(f'error: --workdir={path} is a file')
  assert path.read_text() == 'precious'


# Every command of the package: each module that calls `app.run`.
COMMANDS = ('gemma_mt.train', 'gemma_mt.translate', 'gemma_mt.evaluate', 'gemma_mt.export',
            'gemma_mt.models', 'gemma_mt.stats', 'gemma_mt.launch', 'gemma_mt.data.demo_corpus')


def _one_error_line(module: str, args: list[str], message: str) -> str:
  """Runs ``python -m module args``: it must exit 2 with one stderr line starting ``message``;
  returns that line."""
  done = subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, env=subprocess_env(),
                        capture_output=True, text=True, timeout=120)
  assert (done.returncode, done.stderr.splitlines()) == (
      2, [done.stderr.strip()]), (module, args, done.stderr[-2000:])
  assert done.stderr.startswith(message), (module, args, done.stderr)
  return done.stderr.strip()


def test_flags_that_do_not_parse_are_one_line_exit_2_in_every_command(tmp_path):
  """An unknown flag, a value of the wrong type or not among the choices, a --flagfile that is
  not there, a required flag left out, an argument that is not a flag: one ``error:`` line naming
  it, exit status 2, in every command (absl's own parser prints two lines and exits 1; absl's app
  prints the whole help before an unexpected argument)."""
  sources = {str(p.relative_to(REPO).with_suffix('')).replace('/', '.').removesuffix('.__main__'):
             p.read_text() for p in (REPO / 'gemma_mt').rglob('*.py')}
  assert sorted(m for m, text in sources.items()
                if re.search(r'^ +app\.run\(', text, re.M)) == sorted(COMMANDS)
  cases = [(m, ['--no_such_flag=1'], "error: Unknown command line flag 'no_such_flag'")
           for m in COMMANDS]
  # An argument that is not a flag (launch takes the training flags after --, passed on).
  # With the flags each needs, and none that would write outside tmp_path if it went on.
  required = {'gemma_mt.train': ['--dry_run', f'--workdir={tmp_path}/run'],
              'gemma_mt.export': ['--workdir=unused', '--out=unused'],
              'gemma_mt.data.demo_corpus': [f'--out_dir={tmp_path}/corpus']}
  cases += [(m, [*required.get(m, []), 'stray'],
             'error: unexpected arguments: stray: give each flag as --name=value')
            for m in COMMANDS if m != 'gemma_mt.launch']
  cases += [
      ('gemma_mt.train', ['--packing', 'true'], 'error: unexpected arguments: true: give each '),
      ('gemma_mt.train', ['--batch_size=abc'], 'error: flag --batch_size=abc: invalid literal'),
      ('gemma_mt.train', [f'--flagfile={tmp_path}/missing.flags'],
       f"error: Unable to open flagfile: [Errno 2] No such file or directory: "
       f"'{tmp_path}/missing.flags'"),
      ('gemma_mt.export', ['--format=zip'], 'error: flag --format=zip: value should be one of'),
      # absl's message of several lines, on one.
      ('gemma_mt.export', [], 'error: flag --workdir=None: Flag --workdir must have a value other '
       'than None. flag --out=None: Flag --out must have a value other than None.'),
      ('gemma_mt.launch', ['--', '--max_steps=1'], 'error: flag --num_processes=None: Flag '
       '--num_processes must have a value other than None.'),
  ]
  for module, args, message in cases:
    assert _one_error_line(module, args, message).endswith('(see --help)')


def test_bad_input_is_one_line_exit_2_in_every_command(tmp_path):
  """A flag that parses but cannot be used (a UserError: every command reports it through
  errors.exit_on_user_error) is one ``error:`` line, exit status 2, in each command that does
  work (translate and evaluate before they load the model) and in ``gemma_mt.models`` without
  --list."""
  cases = [
      ('gemma_mt.train', ['--batch_size=0'], 'error: --batch_size must be positive'),
      ('gemma_mt.translate', [f'--input={tmp_path}/none.txt'],
       f'error: --input={tmp_path}/none.txt does not exist: pass a text file'),
      ('gemma_mt.evaluate', ['--limit=-1'], 'error: --limit must be 0 (every pair) or positive'),
      ('gemma_mt.export', [f'--workdir={tmp_path}', f'--out={tmp_path}/out'],
       f'error: --workdir={tmp_path} has no checkpoints/: pass a run directory'),
      ('gemma_mt.stats', ['--batch_size=0'],
       'error: --max_seq_len and --batch_size must be positive'),
      ('gemma_mt.models', [], 'error: pass --list to list the models'),
  ]
  for module, args, message in cases:
    _one_error_line(module, args, message)


@pytest.mark.parametrize('flag', ['--help', '--helpfull'])
def test_help_lists_the_flags_and_imports_neither_jax_nor_tensorflow(flag):
  done = train_reporting_imports(flag)
  assert '--max_seq_len' in done.stdout and '--workdir' in done.stdout
  assert done.stdout.splitlines()[-1] == 'HEAVY []'


def _listed_flags(text: str, gemma_mt_only: bool) -> set[str]:
  """The flag names in absl's help text; with ``gemma_mt_only``, those under gemma_mt's modules."""
  names, section = set(), ''
  for line in text.splitlines():
    if line and not line.startswith(' '):
      section = line
    elif line.startswith('  --') and (not gemma_mt_only or 'gemma_mt' in section):
      names.add(line[4:].split(':')[0])
  return names


def test_help_of_every_command_lists_all_its_flags():
  """--help lists every gemma_mt flag of the command, also those defined in another module
  (train's in train/flags.py, evaluate's model flags in translate.py)."""
  for module in COMMANDS:
    shown = {}
    for flag in ('--help', '--helpfull'):
      done = subprocess.run([sys.executable, '-m', module, flag], cwd=REPO, env=subprocess_env(),
                            capture_output=True, text=True, timeout=120)
      shown[flag] = done.stdout + done.stderr
    full = _listed_flags(shown['--helpfull'], gemma_mt_only=True)
    assert full and _listed_flags(shown['--help'], gemma_mt_only=False) == full, module


@pytest.mark.parametrize('flags, message', [
    (['--workdir=/proc/gemma_mt_run'], 'error: --workdir=/proc/gemma_mt_run is not writable'),
    (['--workdir=/dev/null/run'], 'error: --workdir=/dev/null/run is not writable (Not a dir'),
    (['--workdir={tmp}/run', '--dataset=tsv:/nonexistent/{{split}}.tsv'],
     'error: dataset file /nonexistent/train.tsv does not exist: check --dataset'),
    (['--workdir={tmp}/run', '--dataset=demo', '--eval_split=test'],
     "error: --dataset=demo has no split 'test'"),
])
def test_paths_are_checked_before_jax_is_imported(tmp_path, flags, message):
  """An unwritable --workdir or a missing split file stops the CLI before jax, gemma and
  TensorFlow are imported (a run found the first only after compiling and reading its weights);
  nothing is created, not even the probe file that shows a directory writable."""
  done = train_reporting_imports(*(f.format(tmp=tmp_path) for f in flags))
  assert done.returncode == 2, done.stderr[-2000:]
  assert done.stderr.strip().splitlines()[-1].startswith(message.format(tmp=tmp_path))
  assert 'Traceback' not in done.stderr
  assert done.stdout.splitlines()[-1] == 'HEAVY []'
  assert list(tmp_path.iterdir()) == []
