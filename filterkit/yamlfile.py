"""YAML with line numbers: every value knows the file, line and key path it came from.

filterkit's input files (``filterkit.yaml``, spec files) are read through this module so that a wrong
value is reported as ``file:line: key: what is wrong (how to fix)`` in one line.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterator

import yaml

from .errors import InputError


class Node:
    """One YAML value with its location. Accessors check the type and raise ``InputError``."""

    def __init__(self, node: yaml.Node, path: Path, key: str):
        self._node = node
        self.path = path
        self.key = key
        self.line = node.start_mark.line + 1

    def error(self, message: str) -> InputError:
        label = f"{self.key}: " if self.key else ""
        return InputError(label + message, path=self.path, line=self.line)

    # -- type checks ------------------------------------------------------------------------------
    @property
    def is_null(self) -> bool:
        return isinstance(self._node, yaml.ScalarNode) and self._node.tag == "tag:yaml.org,2002:null"

    @property
    def is_mapping(self) -> bool:
        return isinstance(self._node, yaml.MappingNode)

    @property
    def is_sequence(self) -> bool:
        return isinstance(self._node, yaml.SequenceNode)

    @property
    def is_scalar(self) -> bool:
        return isinstance(self._node, yaml.ScalarNode)

    def _child(self, node: yaml.Node, key: str) -> Node:
        return Node(node, self.path, key)

    def sequence(self) -> list[Node]:
        if not self.is_sequence:
            raise self.error(f"expected a list, got {self._kind()}")
        return [self._child(n, f"{self.key}[{i}]") for i, n in enumerate(self._node.value)]

    def mapping(self, allowed: tuple[str, ...] | None = None) -> Mapping:
        if not self.is_mapping:
            raise self.error(f"expected a mapping of keys to values, got {self._kind()}")
        items: dict[str, Node] = {}
        for key_node, value_node in self._node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise Node(key_node, self.path, self.key).error("keys must be plain strings")
            name = str(key_node.value)
            where = f"{self.key}.{name}" if self.key else name
            if name in items:
                raise Node(key_node, self.path, where).error("key given twice")
            if allowed is not None and name not in allowed:
                hint = difflib.get_close_matches(name, allowed, n=1)
                fix = f"did you mean '{hint[0]}'?" if hint else "allowed: " + ", ".join(allowed)
                raise Node(key_node, self.path, where).error(f"unknown key ({fix})")
            items[name] = self._child(value_node, where)
        return Mapping(self, items)

    def str(self) -> str:
        value = self.value()
        if isinstance(value, (dict, list)) or value is None:
            raise self.error(f"expected a string, got {self._kind()}")
        # A scalar such as 1.40 or yes is kept as the text the user wrote.
        return value if isinstance(value, str) else str(self._node.value)

    def int(self, minimum: int | None = None, maximum: int | None = None) -> int:
        value = self.value()
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"expected a whole number, got {self._kind()} {self._show()}")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise self.error(f"{value} is out of range ({minimum} to {maximum})")
        return value

    def bool(self) -> bool:
        value = self.value()
        if not isinstance(value, bool):
            raise self.error(f"expected true or false, got {self._show()}")
        return value

    def choice(self, choices: tuple[str, ...]) -> str:
        value = self.str()
        if value not in choices:
            raise self.error(f"'{value}' is not one of: {', '.join(choices)}")
        return value

    def value(self) -> Any:
        """The plain Python value (dicts, lists, scalars) below this node."""
        return _construct(self._node)

    def _kind(self) -> str:
        if self.is_mapping:
            return "a mapping"
        if self.is_sequence:
            return "a list"
        if self.is_null:
            return "nothing (null)"
        return "a " + type(self.value()).__name__.replace("str", "string").replace("int", "number")

    def _show(self) -> str:
        return repr(self._node.value) if self.is_scalar else self._kind()


class Mapping:
    """The keys of a YAML mapping, each a ``Node``; tracks which required keys are missing."""

    def __init__(self, owner: Node, items: dict[str, Node]):
        self.owner = owner
        self.items = items

    def __contains__(self, key: str) -> bool:
        return key in self.items

    def __iter__(self) -> Iterator[tuple[str, Node]]:
        return iter(self.items.items())

    def get(self, key: str) -> Node | None:
        node = self.items.get(key)
        return None if node is None or node.is_null else node

    def require(self, key: str, fix: str = "") -> Node:
        node = self.get(key)
        if node is None:
            hint = f" ({fix})" if fix else ""
            raise self.owner.error(f"missing required key '{key}'{hint}")
        return node


def _construct(node: yaml.Node) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def load_yaml(path: Path, what: str) -> Node:
    """Parse one YAML document from ``path``; ``what`` names the file kind in messages."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{what} not found", path=path) from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read {what}: {err}", path=path) from None
    try:
        # libyaml's composer when PyYAML has it: ~5x faster (a 1,000-case spec), same nodes and marks
        node = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else None
        problem = err.problem or err.context or "invalid YAML"
        raise InputError(f"invalid YAML: {problem} (fix the syntax)", path=path, line=line) from None
    except yaml.YAMLError as err:
        raise InputError(f"invalid YAML: {err}", path=path) from None
    if node is None:
        raise InputError(f"{what} is empty", path=path, line=1)
    return Node(node, path, "")
