"""Every module's docstring examples run (``doctest``), and every public class and function has one.

This is ``pytest --doctest-modules`` for the package, with two differences: the albumentations and
MONAI adapters are skipped (with a reason) when their library is not installed, and each module is
its own test, run in a temporary working directory.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import inspect
import pkgutil

import pytest

import stain_transforms

# Modules that import an optional library, and that library.
OPTIONAL = {"stain_transforms.albumentations": "albumentations", "stain_transforms.monai": "monai"}
# The whole-slide modules read and write slides in their examples: the [slides] extra.
OPTIONAL.update({
    f"stain_transforms.slides{name}": "tiffslide"
    for name in ("", ".cli", ".context", ".dataset", ".fit", ".reader", ".statistics", ".testing", ".writer")
})
OPTIONAL["stain_transforms.slides.albumentations"] = "albumentations"
MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(stain_transforms.__path__, "stain_transforms.")
    if not info.name.endswith("__main__")
)
# Public classes and functions that still lack an ``Example:`` section, by module. Their owners add
# examples and remove them from here; anything new must come with an example.
KNOWN_MISSING = {
    "stain_transforms.hub": {
        "WeightsEntry", "weights_dir", "load_registry", "file_sha256", "bundle_weights", "resolve_pretrained",
    },
    "stain_transforms.models.staingan": {"ResnetBlock"},
    "stain_transforms.training.cli": {"run_train_staingan", "run_train_stainnet_unpaired", "run_distill"},
    "stain_transforms.training.distill": {"DistillResult", "save_student"},
    "stain_transforms.training.staingan": {"StainGANConfig", "StainGANResult"},
}


def import_module(name: str):
    if name in OPTIONAL and importlib.util.find_spec(OPTIONAL[name]) is None:
        pytest.skip(f"{name} needs {OPTIONAL[name]}, which is not installed")
    return importlib.import_module(name)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str, tmp_path, monkeypatch) -> None:
    module = import_module(name)
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    for test in doctest.DocTestFinder().find(module, name):
        runner.run(test, out=report.append)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, "".join(report)


@pytest.mark.parametrize("name", MODULES)
def test_public_objects_have_examples(name: str) -> None:
    module = import_module(name)
    missing = []
    for attr, obj in vars(module).items():
        if attr.startswith("_") or getattr(obj, "__module__", None) != name:
            continue
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and "Example" not in (inspect.getdoc(obj) or ""):
            missing.append(attr)
    new = sorted(set(missing) - KNOWN_MISSING.get(name, set()))
    assert not new, f"{name}: public {', '.join(new)} without an Example: section in the docstring"
