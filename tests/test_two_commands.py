"""The two README commands: install is idempotent, and CI runs exactly `make test`."""

from __future__ import annotations

import subprocess

from cluster.paths import REPO_ROOT


def test_a_second_install_has_nothing_to_do():
    # `make test` installed the project before running this suite; `make -q` exits 0 only when
    # every target is up to date, i.e. a second `make test` / `make serve` reinstalls nothing.
    done = subprocess.run(["make", "-q", "install"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ci_runs_the_readme_test_command():
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    readme = (REPO_ROOT / "README.md").read_text()
    assert "exec make test" in ci
    quickstart = readme.split("## Quickstart", 1)[1].split("##", 1)[0]
    assert quickstart.index("make serve") < quickstart.index("make test")
