"""What `pip install` gets: every imported package declared, the lock covering every declared range, and a
profiling-only install (no torch, no executorch) that profiles all the same, skipping whole programs with
one sentence. The last is checked in this virtualenv with torch and executorch hidden from the import
system, which is what a fresh `pip install .` without extras looks like to the kit."""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
STAGES = ("jcw", "profiler", "predictor", "search", "android_harness")
SEARCH_ONLY = {"torch", "executorch", "pymoo"}  # what a profiling host does without (the `search` extra)
LAB_ONLY = {"ray"}  # the device lab across hosts (the `lab` extra, profiler/lab_ray.py)
#: Modules that tests write and import themselves (a stand-in acquisition plug-in).
MADE_BY_TESTS = {"pick_small"}
FAST = ["--runner-arg=--warmup=0", "--runner-arg=--min-reps=1", "--runner-arg=--max-reps=1",
        "--runner-arg=--min-time-ms=0", "--runner-arg=--check-samples=0"]


def requirements(*extras: str) -> list[Requirement]:
    found = [Requirement(text) for text in PROJECT["dependencies"]]
    for extra in extras:
        found += [Requirement(text) for text in PROJECT["optional-dependencies"][extra]]
    return found


def distributions_provided(declared: list[Requirement]) -> set[str]:
    """The distributions a set of requirements brings in by name: each one, and what its requested extras
    add (adb-shell[usb] brings libusb1, imported as usb1)."""
    from importlib import metadata
    names = {canonicalize_name(r.name) for r in declared}
    for requirement in declared:
        for text in metadata.requires(requirement.name) or []:
            child = Requirement(text)
            if child.marker is not None and any(
                    child.marker.evaluate({**default_environment(), "extra": extra}) for extra in requirement.extras):
                names.add(canonicalize_name(child.name))
    return names


def third_party_imports(*folders: str) -> dict[str, set[str]]:
    """{top-level module: files importing it} for the modules that are neither the standard library nor the
    kit's own (stages, test and benchmark helpers)."""
    own = set(STAGES) | {"tests", "benchmarks", "tools"} | MADE_BY_TESTS
    own |= {path.stem for folder in ("tests", "benchmarks") for path in (ROOT / folder).glob("*.py")}
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            if "build" in path.relative_to(ROOT).parts:  # the Android sysroot's own python files
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in own:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def undeclared(imports: dict[str, set[str]], declared: set[str]) -> list[str]:
    from importlib.metadata import packages_distributions
    by_module = packages_distributions()
    return sorted(f"{module} (in {sorted(files)[0]})" for module, files in imports.items()
                  if not {canonicalize_name(d) for d in by_module.get(module, [module])} & declared)


def test_the_stages_import_only_what_a_profiling_install_or_the_search_extra_declares():
    imports = third_party_imports(*STAGES)
    assert SEARCH_ONLY <= set(imports)  # the check below sees the search stage's imports
    base = distributions_provided(requirements())
    assert not SEARCH_ONLY & base, "torch and executorch must stay out of a profiling-only install"
    assert not LAB_ONLY & base, "ray must stay out of a profiling-only install"
    assert undeclared({m: f for m, f in imports.items() if m not in SEARCH_ONLY | LAB_ONLY}, base) == []
    assert undeclared({m: f for m, f in imports.items() if m not in LAB_ONLY},
                      distributions_provided(requirements("search"))) == []
    assert undeclared(imports, distributions_provided(requirements("search", "lab"))) == []


def test_tests_benchmarks_and_tools_import_only_declared_packages():
    imports = third_party_imports("tests", "benchmarks", "tools")
    assert {"pytest", "numpy"} <= set(imports)
    assert undeclared(imports, distributions_provided(requirements(*PROJECT["optional-dependencies"]))) == []


def test_the_lock_pins_every_declared_requirement_within_its_range():
    lock = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert name and version and " " not in line, f"not an exact pin: {line!r}"
            lock[canonicalize_name(name)] = Version(version)
    declared = requirements(*PROJECT["optional-dependencies"])
    missing = [r.name for r in declared if canonicalize_name(r.name) not in lock]
    assert missing == []
    outside = [f"{r} (locked {lock[canonicalize_name(r.name)]})" for r in declared
               if not r.specifier.contains(lock[canonicalize_name(r.name)], prereleases=True)]
    assert outside == []
    for requirement in declared:  # and the lock pins what pip would pin: ranges, not `==`, in pyproject
        assert not any(spec.operator == "==" for spec in requirement.specifier) or requirement.name == "executorch"


# ---- a profiling-only install ------------------------------------------------------------------------
WITHOUT_TORCH = textwrap.dedent("""
    import sys
    from importlib.machinery import PathFinder

    class HideSearchExtra(PathFinder):
        '''The path finder, blind to torch and executorch, as on a host that never installed them.'''
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name.partition(".")[0] in ("torch", "executorch"):
                return None
            return super().find_spec(name, path, target)

    sys.meta_path[:] = [HideSearchExtra if finder is PathFinder else finder for finder in sys.meta_path]
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        sys.exit("torch is still importable: the test proves nothing")
    from jcw.__main__ import main
    status = main(sys.argv[1:])
    loaded = sorted(m for m in ("torch", "executorch") if m in sys.modules)
    if loaded:
        sys.exit(f"imported {loaded}")
    sys.exit(status)
""")


def jcw_without_torch(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *map(str, argv)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_profile_help_needs_no_torch():
    done = jcw_without_torch("profile", "--help")
    assert done.returncode == 0, done.stderr
    assert "jcw[search]" in done.stdout


def test_a_profile_without_torch_measures_layers_and_skips_programs_in_one_sentence(tmp_path):
    out = tmp_path / "p"
    done = jcw_without_torch("profile", "--device", "local", "--out", out, "--budget", "2", "--holdout", "0",
                             "--rounds", "1", *FAST)
    assert done.returncode == 0, done.stderr
    note = [line for line in done.stderr.splitlines() if line.startswith("jcw profile:")]
    assert len(note) == 1 and "install the search extra (`pip install 'jcw[search]'`" in note[0], done.stderr
    assert "the layer profile is complete" in note[0] and "Traceback" not in done.stderr
    from jcw.profiler.store import ProfileStore
    with ProfileStore(out, readonly=True) as store:
        assert len(store.measurements()) > 0 and store.program_measurements() == []


def test_asking_for_programs_without_torch_is_refused_before_anything_runs(tmp_path):
    out = tmp_path / "p"
    done = jcw_without_torch("profile", "--device", "local", "--out", out, "--budget", "2", "--programs", "3")
    assert done.returncode == 2 and done.stdout == ""
    (sentence,) = done.stderr.strip().splitlines()
    assert sentence.startswith("jcw profile: --programs 3: this installation has no torch or executorch")
    assert "or pass --programs 0 to profile layers only." in sentence
    assert not out.exists()
