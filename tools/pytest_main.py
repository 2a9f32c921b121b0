"""Runs the pytest test modules given as arguments: the `main` of the py_test targets in BUILD.

Bazel runs a py_test from its runfiles tree (the working directory, which holds WORKSPACE-relative
copies of the target's sources and data, pytest.ini and tests/conftest.py among them), so pytest
is started there with that directory as rootdir. Three adjustments for Bazel:

- The venv's editable install of tff_hsq (`pip install -e .`, made by `make venv`) would import
  the package from the source tree even when the target's deps lack a module. Its finder is
  removed, so a module missing from `deps` fails the test as it would in a fresh environment.
- Bazel asks for a JUnit XML report in $XML_OUTPUT_FILE; pytest writes it.
- No bytecode or pytest cache is written into the runfiles tree.
"""

import os
import sys

sys.dont_write_bytecode = True


def _is_editable(finder):
  # setuptools installs its finder class itself (not an instance) on sys.meta_path.
  module = finder.__module__ if isinstance(finder, type) else type(finder).__module__
  return module.startswith('__editable__')


def _drop_editable_finders():
  sys.meta_path[:] = [finder for finder in sys.meta_path if not _is_editable(finder)]
  sys.path_hooks[:] = [hook for hook in sys.path_hooks
                       if not getattr(hook, '__module__', '').startswith('__editable__')]
  sys.path[:] = [entry for entry in sys.path if not entry.startswith('__editable__')]
  sys.path_importer_cache.clear()
  for name in [name for name in sys.modules if name.startswith('__editable__')]:
    del sys.modules[name]


def main(argv):
  _drop_editable_finders()
  import pytest  # pylint: disable=g-import-not-at-top
  args = ['--rootdir', os.getcwd(), '-p', 'no:cacheprovider']
  if os.environ.get('XML_OUTPUT_FILE'):
    args.append('--junitxml=' + os.environ['XML_OUTPUT_FILE'])
  return pytest.main(args + argv)


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
