"""A griffe extension for the API reference: read ``Example:`` docstring sections as examples.

The project's docstrings name their doctest section ``Example:`` (singular). Google style, as griffe
parses it, only knows ``Examples:``; a singular ``Example:`` becomes a Markdown admonition, where the
``>>>`` lines turn into block quotes. This extension renames the header, so that mkdocstrings renders
the examples as code. mkdocs.yml loads it; nothing else uses it.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

# "Example:" alone on its line (any indentation), optionally followed by spaces.
EXAMPLE_HEADER = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename every docstring's ``Example:`` section header to ``Examples:``."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = EXAMPLE_HEADER.sub(r"\1Examples:", obj.docstring.value)
