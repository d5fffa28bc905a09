"""A griffe extension for the API reference: docstrings that classes are given when they are created.

The adapters' per-method classes (``stain_transforms.albumentations.MacenkoNormalize``, ...) are one
line each: their docstrings are filled in from the registry's table when the class is created, which
griffe's static analysis cannot see. For a public class without a docstring in its source, this
extension imports the class and takes the docstring it has at run time. mkdocs.yml loads it; nothing
else uses it.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import griffe


class GeneratedDocstrings(griffe.Extension):
    """Give a class without a docstring in its source the docstring it has once imported."""

    def on_class_instance(self, *, cls: griffe.Class, agent: Any, **kwargs: Any) -> None:
        if cls.docstring is not None or cls.name.startswith("_"):
            return
        try:
            runtime = getattr(importlib.import_module(cls.module.path), cls.name)
        except (ImportError, AttributeError):
            return  # a nested class, or a module that cannot be imported here: left as it is
        if isinstance(runtime, type) and runtime.__doc__:
            cls.docstring = griffe.Docstring(
                inspect.cleandoc(runtime.__doc__),
                parent=cls,
                parser=getattr(agent, "docstring_parser", None),
                parser_options=getattr(agent, "docstring_options", None),
            )
