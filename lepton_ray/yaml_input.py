"""How config files are read: safe YAML with duplicate keys and oversized files refused, and dotted
overrides (`--set training.epochs=2`) applied to the parsed mapping before validation."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from lepton_ray.errors import ConfigError


MAX_INPUT_BYTES = 1 << 20
"""Configs are a few KB; a larger file is a mistake, refused before parsing (a 50 MB one took 26 s and 1.5 GB)."""


class UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (a `ConfigError`; plain YAML lets the second silently win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor`, whose keys this mapping may override
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (list, dict)):
                continue  # unhashable: the safe loader's own error names it
            if key in seen:
                raise ConfigError(f"key {key!r} is given twice in one mapping (line {key_node.start_mark.line + 1}); keep one of them")
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    """Load a YAML mapping with the safe loader; tags that would run code, duplicate keys and oversized files are refused."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what}: file {str(path)!r} not found; pass the path of an existing YAML file")
    if path.stat().st_size > MAX_INPUT_BYTES:
        raise ConfigError(f"{what}: {path} is {path.stat().st_size / 2**20:.1f} MiB, over the {MAX_INPUT_BYTES >> 20} MiB limit for a YAML config; check that this is the right file")
    try:
        loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except ConfigError as err:  # a duplicate key
        raise ConfigError(f"{what}: {path}: {err}") from None
    except yaml.YAMLError as err:
        first_line = str(err).strip().splitlines()[0]
        raise ConfigError(f"{what}: {path} is not valid plain YAML ({first_line}); remove tags and fix the syntax") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{what}: cannot read {path} as UTF-8 text ({str(err)[:120]}); pass a YAML file") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what}: {path} must hold a mapping of keys at the top level")
    return loaded


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of `raw` with dotted paths (`a.b.0.c`) set; list indices are integers."""
    updated = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        node: Any = updated
        parts = dotted.split(".")
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = node[_index(node, part, dotted)]
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
                if node is None:
                    raise ConfigError(f"{dotted}: cannot set a key below an empty value")
            else:
                raise ConfigError(f"{dotted}: {'.'.join(parts[:depth])} is not a mapping")
        last = parts[-1]
        if isinstance(node, list):
            node[_index(node, last, dotted)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"{dotted}: {'.'.join(parts[:-1])} is not a mapping")
    return updated


def _index(node: list, part: str, dotted: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"{dotted}: {part!r} is not an index of a list of {len(node)} items")
    return int(part)
