"""pytest_test: a py_test per test module, run under pytest by //tools:pytest_main.py."""

load("@rules_python//python:defs.bzl", "py_test")

def pytest_test(name, size, deps, data = [], tags = []):
    """A py_test of tests/<name>.py, run by pytest from the runfiles root.

    tests/conftest.py, which pytest loads for every module, comes in through //:conftest.

    Args:
      name: the test module's name, tests/<name>.py.
      size: the Bazel test size.
      deps: the py_library targets the module imports (besides :conftest).
      data: files the module reads.
      tags: e.g. ["slow"], the tests `make bazel-test` (CI) leaves out.
    """
    src = "tests/%s.py" % name
    py_test(
        name = name,
        size = size,
        srcs = [
            src,
            "//tools:pytest_main.py",
        ],
        args = ["$(location %s)" % src],
        data = data,
        main = "//tools:pytest_main.py",
        tags = tags,
        deps = [":conftest"] + deps,
    )
