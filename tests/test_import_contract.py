"""The stage order of ARCHITECTURE.md as an import-linter contract (pyproject.toml, [tool.importlinter]):
android_harness -> profiler -> predictor -> search -> the `jcw` dispatcher, all under the `jcw` namespace
(jcw.profiler, ...), no stage importing a later one. The contract
holds for the kit, and the same contract, copied verbatim, breaks on a tree where a stage imports a later
one, so a green run means something."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
DISPATCHER = "__main__ : demo"
STAGES = ("search", "predictor", "profiler", "android_harness")


def lint_imports(cwd: Path, config: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:  # the stand-in packages come first, ahead of the installed kit
        env["PYTHONPATH"] = str(pythonpath)
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(config)!r}, no_cache=True, no_logo=True))")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_contract_is_the_architectures_stage_order():
    (contract,) = CONTRACT["contracts"]
    assert contract["type"] == "layers"
    assert CONTRACT["root_packages"] == ["jcw"] and contract["containers"] == ["jcw"]
    assert contract["layers"] == [DISPATCHER, *STAGES]


def test_no_stage_imports_a_later_stage():
    done = lint_imports(ROOT, ROOT / "pyproject.toml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


def _stand_in_tree(root: Path, violation: bool) -> Path:
    """A `jcw` namespace with the dispatcher and the four stage packages, each importing the one below it;
    with `violation`, the profiler imports the predictor (a later stage), as a careless
    `from jcw.predictor.features import ...` in profiler/ would."""
    namespace = root / "jcw"
    namespace.mkdir(parents=True)
    (namespace / "__init__.py").write_text("")
    (namespace / "__main__.py").write_text("import jcw.search.core\n")
    (namespace / "demo.py").write_text("import jcw.__main__\n")
    for package, below in zip(STAGES, [*STAGES[1:], None]):
        (namespace / package).mkdir()
        (namespace / package / "__init__.py").write_text("")
        lines = [f"import jcw.{below}.core\n"] if below else []
        if violation and package == "profiler":
            lines.append("from jcw.predictor import core as later_stage\n")
        (namespace / package / "core.py").write_text("".join(lines))
    config = root / "pyproject.toml"
    config.write_text((ROOT / "pyproject.toml").read_text())
    return config


def test_the_contract_breaks_when_a_stage_imports_a_later_one(tmp_path):
    clean = _stand_in_tree(tmp_path / "clean", violation=False)
    kept = lint_imports(clean.parent, clean, pythonpath=clean.parent)
    assert kept.returncode == 0, kept.stdout + kept.stderr  # the stand-in tree alone keeps the contract

    broken = _stand_in_tree(tmp_path / "broken", violation=True)
    done = lint_imports(broken.parent, broken, pythonpath=broken.parent)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "BROKEN" in done.stdout and "jcw.profiler.core -> jcw.predictor.core" in done.stdout
