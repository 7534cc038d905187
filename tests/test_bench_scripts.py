"""The benchmark scripts' own checks (their numbers are never asserted; CI runs each with
--quick, and bench/gpu_suite.sh with --cpu)."""

import subprocess
import sys

from conftest import REPO, subprocess_env


def test_gpu_suite_without_a_gpu_is_one_line_exit_2():
  for args, env, message in (
      ([], {'PYTHON': sys.executable}, "error: no GPU seen by"),
      (['--gpu'], {}, 'error: unknown argument --gpu'),
      ([], {'PYTHON': '/nonexistent/python'}, 'error: /nonexistent/python cannot import jax')):
    done = subprocess.run(['bash', 'bench/gpu_suite.sh', *args], cwd=REPO,
                          env={**subprocess_env(), **env}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, (args, done.stderr)
    assert done.stderr.startswith(message) and done.stderr.count('\n') == 1, done.stderr
    assert done.stdout == ''
