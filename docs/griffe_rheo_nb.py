"""Docstrings as the API reference shows them.

rheo_nb's docstrings are written for ``help()`` and Shift-Tab in a notebook: reST roles
(``:class:`File```), ``>>>`` examples with doctest flags, ``::`` before a literal block.
This griffe extension turns them into the Markdown that mkdocstrings renders: roles
become code, examples become ``pycon`` blocks, flags and ``::`` go. A function decorated
with ``@_with_options_of(fetch)`` takes ``fetch``'s parameters at run time; here it is
given them too, so the reference shows the same signature as ``help()``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_TEMPLATE = re.compile(r"_with_options_of\((\w+)\)")
_ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|exc|obj):`~?([^`]+)`")
_DOCTEST_FLAG = re.compile(r"\s*# doctest: [+-]\w+")


def _examples(text: str) -> str:
    """Fence every run of ``>>>`` lines (and the output that follows) as a pycon block."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.lstrip().startswith(">>>"):
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(line.lstrip())]
        block = []
        while i < len(lines) and lines[i].strip() and lines[i].startswith(indent):
            block.append(_DOCTEST_FLAG.sub("", lines[i][len(indent) :]))
            i += 1
        if out and out[-1].strip():
            out.append("")
        out += [f"{indent}```pycon", *(indent + b for b in block), f"{indent}```"]
        if i < len(lines) and lines[i].strip():
            out.append("")
    return "\n".join(out)


def markdown(text: str) -> str:
    """A docstring in reST habits, as Markdown."""
    text = _ROLE.sub(lambda m: f"`{m.group(1)}`", text)
    text = re.sub(r"::$", ":", text, flags=re.MULTILINE)
    return _examples(text)


class RheoNbDocstrings(griffe.Extension):
    """Rewrite every docstring of the package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        todo: list[griffe.Object] = [pkg]
        while todo:
            obj = todo.pop()
            if obj.docstring is not None:
                obj.docstring.value = markdown(obj.docstring.value)
            if isinstance(obj, griffe.Function):
                _take_parameters(obj)
            todo += [m for m in obj.members.values() if not m.is_alias]  # type: ignore[misc]


def _take_parameters(function: griffe.Function) -> None:
    for decorator in function.decorators:
        found = _TEMPLATE.search(str(decorator.value))
        if found and function.parent is not None:
            template = function.parent.members[found.group(1)]
            assert isinstance(template, griffe.Function)
            function.parameters = template.parameters
