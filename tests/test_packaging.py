"""Packaging: the README's commands, CI's test command and the installed layout agree."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    return re.findall(r"^```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S | re.M)


def test_readme_has_exactly_two_commands_and_ci_runs_the_test_one():
    commands = readme_commands()
    assert len(commands) == 2
    install_and_run, install_and_test = commands
    assert "recipes/digits.py" in install_and_run and "pytest" in install_and_test
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install_and_test in ci_lines


def test_callbacks_and_recipes_live_under_loopkit_only(tmp_path):
    # Run outside the checkout, where only the installed package is importable.
    code = (
        "import importlib.util, loopkit.callbacks, loopkit.recipes;"
        "print(importlib.util.find_spec('callbacks'), importlib.util.find_spec('recipes'),"
        " loopkit.callbacks.__name__, loopkit.recipes.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "None", "loopkit.callbacks", "loopkit.recipes"]


# --- Installs, run from the repository root, from its parent, and from elsewhere. ---
# Each test copies the checkout into a folder named `loopkit` (as a clone is named), installs
# it into a throw-away venv and runs python there. The venv borrows this environment's
# packages (torch...) through a .pth file, so only loopkit is installed, in a few seconds.

# Run the digits recipe's --help as `python -m` does, then say where each package came from.
# One process per place does both, as each start imports torch.
CHECK = """
import importlib.util, runpy, sys
sys.argv = ["-m", "--help"]
try:
    runpy.run_module("loopkit.recipes.digits", run_name="__main__", alter_sys=True)
except SystemExit as exit:
    assert exit.code == 0, exit.code
import loopkit, loopkit.callbacks, loopkit.recipes
from loopkit.callbacks import AvgStats
top_level = importlib.util.find_spec("callbacks") or importlib.util.find_spec("recipes")
print("FOUND", loopkit.__file__, loopkit.callbacks.__file__, loopkit.recipes.__file__, top_level)
"""


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """Copy the files git knows (tracked and new, links kept as links) into PARENT/loopkit."""
    git = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    listed = subprocess.run(git, cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip(f"needs a git checkout to copy: {listed.stderr.strip()}")
    dest = tmp_path_factory.mktemp("parent") / "loopkit"
    for name in filter(None, listed.stdout.split("\0")):
        source, target = ROOT / name, dest / name
        if not os.path.lexists(source):  # deleted, not yet committed
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
    return dest


def borrowing_venv(path: Path) -> Path:
    """Create a venv whose own site-packages comes first and this environment's after it."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    code = "import sysconfig; print(sysconfig.get_path('purelib'))"
    purelib = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    borrowed = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    # "zz" sorts after __editable__.loopkit-*.pth, so an editable install's path comes first.
    Path(purelib.stdout.strip(), "zz_borrowed.pth").write_text("\n".join(borrowed) + "\n")
    return python


def build_flags() -> list[str]:
    """Build without isolation (fast, offline) when this environment meets build-system.requires."""
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    for requirement in map(Requirement, requires):
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            return []
        if not requirement.specifier.contains(version, prereleases=True):
            return []
    return ["--no-build-isolation"]


def pip(python: Path, *args: str | Path) -> None:
    out = subprocess.run([python, "-m", "pip", *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def pip_install(python: Path, *args: str | Path) -> None:
    # --ignore-installed: never uninstall a loopkit found on the borrowed path.
    pip(python, "install", "-q", "--no-deps", "--ignore-installed", *build_flags(), *args)


def run_everywhere(python: Path, places: dict[str, Path]) -> dict[str, list[Path | None]]:
    """Run CHECK in each place, in parallel.

    Returns, per place, the files of loopkit, loopkit.callbacks and loopkit.recipes (resolved,
    None for a namespace package) and the spec of a top-level callbacks or recipes (None).
    """
    procs = {
        place: subprocess.Popen([python, "-c", CHECK], cwd=cwd, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        for place, cwd in places.items()
    }
    outputs = {place: (*proc.communicate(), proc.returncode) for place, proc in procs.items()}
    failed = {place: err.strip().splitlines()[-1:] for place, (_, err, rc) in outputs.items() if rc}
    assert not failed, failed
    found = {}
    for place, (out, _, _) in outputs.items():
        assert out.startswith("usage: python -m loopkit.recipes.digits"), out
        files = out.split("FOUND ")[1].split()
        found[place] = [None if f == "None" else Path(f).resolve() for f in files]
    return found


def sources(checkout: Path) -> list[Path]:
    """The files of loopkit, loopkit.callbacks and loopkit.recipes in a checkout."""
    return [checkout / folder / "__init__.py" for folder in ("loopkit", "callbacks", "recipes")]


def installed(venv: Path) -> list[Path]:
    """The files of loopkit, loopkit.callbacks and loopkit.recipes installed in a venv."""
    (purelib,) = venv.glob("lib/python*/site-packages")
    package = purelib.resolve() / "loopkit"
    return [package / "__init__.py", *(package / sub / "__init__.py" for sub in ("callbacks", "recipes"))]


@pytest.mark.slow
def test_regular_install_works_from_the_root_its_parent_and_elsewhere(clone, tmp_path):
    python = borrowing_venv(tmp_path / "venv")
    pip_install(python, clone)
    (elsewhere := tmp_path / "elsewhere").mkdir()
    found = run_everywhere(python, {"root": clone, "parent": clone.parent, "elsewhere": elsewhere})
    # From the root the checkout's loopkit/ shadows the installed one, so it must be complete.
    assert found["root"][:3] == sources(clone)
    assert found["parent"] == found["elsewhere"] == [*installed(tmp_path / "venv"), None]
    collect = [python, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    collected = subprocess.run(collect, cwd=clone, capture_output=True, text=True)
    assert collected.returncode == 0, collected.stdout[-2000:]


@pytest.mark.slow
def test_editable_install_works_from_the_root_its_parent_and_elsewhere(clone, tmp_path):
    python = borrowing_venv(tmp_path / "venv")
    pip_install(python, "-e", clone)
    (elsewhere := tmp_path / "elsewhere").mkdir()
    found = run_everywhere(python, {"root": clone, "parent": clone.parent, "elsewhere": elsewhere})
    # From the parent the clone (no __init__.py) must not be taken for a namespace package loopkit.
    assert found["root"][:3] == found["parent"][:3] == found["elsewhere"][:3] == sources(clone)
    assert found["parent"][3] is found["elsewhere"][3] is None


@pytest.mark.slow
def test_wheel_holds_each_module_once_under_loopkit_and_works_installed(clone, tmp_path):
    python = borrowing_venv(tmp_path / "venv")
    pip(python, "wheel", "-q", "--no-deps", *build_flags(), "-w", tmp_path / "dist", clone)
    (wheel,) = (tmp_path / "dist").glob("loopkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    expected = [f"loopkit/{p.name}" for p in (clone / "loopkit").glob("*.py")]
    for folder in ("callbacks", "recipes"):
        expected += [f"loopkit/{folder}/{p.name}" for p in (clone / folder).glob("*.py")]
    assert sorted(n for n in names if ".dist-info/" not in n) == sorted(expected)
    assert len(names) == len(set(names))
    pip_install(python, wheel)
    (elsewhere := tmp_path / "elsewhere").mkdir()
    found = run_everywhere(python, {"elsewhere": elsewhere})
    assert found["elsewhere"] == [*installed(tmp_path / "venv"), None]
