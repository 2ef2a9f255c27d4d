"""Blueprints: one or more servers described in YAML, validated, versioned and previewed.

Format (version 1)
==================

A blueprint is a YAML mapping::

    version: 1            # format version
    description: Two-tier web application
    parameters:
      web_count: {type: integer, default: 2, min: 1, max: 10, description: Web servers}
      admin_email: {type: string, default: "ops@example.com"}
    servers:
      web:
        image: Debian 12        # an Image of the organisation by "name" or "name version"
        profile: small          # a HardwareProfile slug or name
        count: "{{ web_count }}"   # integer or a parameter reference
        placement: {spread: accounts}   # accounts | regions | none
        networks: [default]
        ports: [80, 443, {port: 22, cidr: 10.0.0.0/8}]
        user_data: |
          #!/bin/sh
          echo "{{ admin_email }}" > /etc/motd
        depends_on: [db]
      db:
        image: Debian 12
        profile: medium
        count: 1

Top level
    ``version`` (required, the number 1), ``description`` (text, optional), ``parameters`` (optional) and
    ``servers`` (required, 1 to 50 servers). No other keys.

Parameters
    Asked for when the blueprint is launched. Names use letters, digits and ``_`` and start with a letter or ``_``.
    Each takes ``type`` (required: ``string``, ``integer``, ``number``, ``boolean`` or ``choice``), ``default``
    (must match the type, and ``min``/``max``/``choices`` when given), ``min`` and ``max`` (integer and number
    only), ``choices`` (a list, required for and only for ``choice``) and ``description``. A parameter without a
    default must be given at launch.

Servers
    The key is the server's name (lowercase letters, digits and ``-``, starting with a letter, at most 40
    characters); instances are named ``<server>-1``, ``<server>-2``, ...

    - ``image`` (required): an image of the organisation, by name (``Debian``) or name and version
      (``Debian 12``). When several versions share the name, give the version.
    - ``profile`` (required): a hardware profile by slug (``small``) or name.
    - ``count``: how many instances, 1 to 100 (default 1), or a reference to an integer parameter such as
      ``"{{ web_count }}"`` (quoted: YAML reads an unquoted ``{`` as a mapping).
    - ``placement``: ``{spread: accounts}`` puts the instances round-robin on different cloud accounts,
      ``{spread: regions}`` on different account-regions, ``{spread: none}`` (the default) all on the cheapest
      fitting one.
    - ``networks``: network names; ``default`` is the account's default network (default ``[default]``).
    - ``ports``: ports opened to the instances: a number (1-65535, open to everyone), or ``{port: 22,
      cidr: 10.0.0.0/8, protocol: tcp}`` (``protocol`` is ``tcp`` or ``udp``, default ``tcp``; ``cidr`` default
      ``0.0.0.0/0``).
    - ``user_data``: the first-boot script (cloud-init), at most 16 KiB. ``{{ name }}`` is replaced by the value
      of parameter ``name``; ``{{ db.private_ip }}`` by an output of server ``db``, which must be listed in
      ``depends_on`` (outputs: ``private_ip``, ``public_ip`` (of its first instance), ``private_ips``,
      ``public_ips``, ``names`` (of all its instances, comma-separated)). Nothing else is interpreted (no
      expressions, filters or code).
    - ``depends_on``: names of servers created before this one. No cycles.

Rules
    Sources are limited to 200 kB, 5,000 YAML nodes (anchors and aliases are expanded when counted) and 20 levels
    of nesting; keys are unique text; only plain YAML types are read (no language-specific tags). Every problem is
    reported with its line and column.

The validated document (``BlueprintVersion.spec``) is the same structure with every default filled in, ``ports``
as ``{port, cidr, protocol}`` mappings, ``placement`` as ``{spread: ...}``, and each server's ``image_id`` and
``profile_id`` resolved when the version was saved (a saved version keeps launching the same image).
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import jsonschema
import yaml
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.utils.text import slugify
from guardian.shortcuts import assign_perm, remove_perm

from apps.accounts.models import Organization, Project, User
from apps.catalog.models import Blueprint, BlueprintVersion, HardwareProfile, Image, ImageCopy
from apps.catalog.permissions import require_change
from apps.catalog.profiles import ProfileFit, cheapest, profile_mappings
from apps.clouds.models import CloudAccount, Flavor
from apps.core import audit
from apps.core.access import get_access
from apps.core.permissions import ServiceError

MAX_SOURCE_BYTES = 200_000
MAX_NODES = 5_000
MAX_DEPTH = 20
MAX_INSTANCES = 100
MAX_USER_DATA = 16384  # characters of user_data, as written and once the parameters are filled in
HOURS_PER_MONTH = 730
PARAM_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,63}"
REFERENCE_RE = re.compile(r"\{\{\s*(" + PARAM_NAME + r")\s*\}\}")
ANY_BRACES_RE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
OUTPUTS = ("private_ip", "public_ip", "private_ips", "public_ips", "names")
OUTPUT_REF_RE = re.compile(r"\{\{\s*([a-z][a-z0-9-]{0,39})\.([a-z_]+)\s*\}\}")
COUNT_REF_RE = re.compile(r"^\s*\{\{\s*(" + PARAM_NAME + r")\s*\}\}\s*$")
PARAMETER_TYPES = ("string", "integer", "number", "boolean", "choice")
SPREADS = ("accounts", "regions", "none")

BLUEPRINT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["version", "servers"],
    "additionalProperties": False,
    "properties": {
        "version": {"const": 1, "x-message": "version must be 1"},
        "description": {"type": "string", "maxLength": 1000},
        "parameters": {
            "type": "object",
            "maxProperties": 50,
            "propertyNames": {
                "pattern": "^" + PARAM_NAME + "$",
                "x-message": "parameter names use letters, digits and '_' and start with a letter or '_'",
            },
            "additionalProperties": {"$ref": "#/$defs/parameter"},
        },
        "servers": {
            "type": "object",
            "minProperties": 1,
            "maxProperties": 50,
            "propertyNames": {
                "pattern": "^[a-z][a-z0-9-]{0,39}$",
                "x-message": "server names use lowercase letters, digits and '-', start with a letter and have at "
                "most 40 characters",
            },
            "additionalProperties": {"$ref": "#/$defs/server"},
        },
    },
    "$defs": {
        "parameter": {
            "type": "object",
            "required": ["type"],
            "additionalProperties": False,
            "properties": {
                "type": {"enum": list(PARAMETER_TYPES)},
                "default": {"type": ["string", "number", "boolean"]},
                "min": {"type": "number"},
                "max": {"type": "number"},
                "choices": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 100,
                    "uniqueItems": True,
                    "items": {"type": ["string", "number", "boolean"]},
                },
                "description": {"type": "string", "maxLength": 300},
            },
        },
        "port": {
            "type": ["integer", "object"],
            "minimum": 1,
            "maximum": 65535,
            "required": ["port"],
            "additionalProperties": False,
            "properties": {
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "cidr": {"type": "string", "minLength": 1, "maxLength": 64},
                "protocol": {"enum": ["tcp", "udp"]},
            },
        },
        "server": {
            "type": "object",
            "required": ["image", "profile"],
            "additionalProperties": False,
            "properties": {
                "image": {"type": "string", "minLength": 1, "maxLength": 150},
                "profile": {"type": "string", "minLength": 1, "maxLength": 60},
                "count": {
                    "type": ["integer", "string"],
                    "minimum": 1,
                    "maximum": MAX_INSTANCES,
                    "pattern": COUNT_REF_RE.pattern,
                    "x-message": 'count must be a whole number or a parameter reference like "{{ name }}"',
                },
                "placement": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"spread": {"enum": list(SPREADS)}},
                },
                "networks": {
                    "type": "array",
                    "maxItems": 10,
                    "uniqueItems": True,
                    "items": {"type": "string", "minLength": 1, "maxLength": 255},
                },
                "ports": {"type": "array", "maxItems": 50, "items": {"$ref": "#/$defs/port"}},
                "user_data": {"type": "string", "maxLength": MAX_USER_DATA},
                "depends_on": {
                    "type": "array",
                    "uniqueItems": True,
                    "items": {"type": "string", "minLength": 1},
                },
            },
        },
    },
}

_VALIDATOR = jsonschema.Draft202012Validator(BLUEPRINT_SCHEMA)


# --- issues and marks ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlueprintIssue:
    line: int | None  # 1-based
    column: int | None  # 1-based
    path: str  # e.g. "servers.web.count"
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "blueprint"
        if self.line is not None and self.column is not None:
            where += f", column {self.column}"
        return f"{where}: {self.message}"


def issues_text(issues: Iterable[BlueprintIssue]) -> str:
    return "\n".join(str(i) for i in issues)


def _path_text(path: Iterable[Any]) -> str:
    return ".".join(str(p) for p in path)


class _TooBig(Exception):
    pass


def _scalar_key(node: yaml.Node) -> str | None:
    return node.value if isinstance(node, yaml.ScalarNode) else None


def _pairs(node: yaml.MappingNode) -> list[tuple[yaml.Node, yaml.Node]]:
    """The mapping's own pairs followed by those brought in with merge keys (`<<: *defaults`)."""
    own = [(k, v) for k, v in node.value if not (isinstance(k, yaml.ScalarNode) and k.tag.endswith(":merge"))]
    merged: list[tuple[yaml.Node, yaml.Node]] = []
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.tag.endswith(":merge"):
            sources = v.value if isinstance(v, yaml.SequenceNode) else [v]
            for source in sources:
                if isinstance(source, yaml.MappingNode):
                    merged.extend(_pairs(source))
    return own + merged


def _find(root: yaml.Node | None, path: Iterable[Any], *, key: bool = False) -> yaml.Node | None:
    """The node at `path` (its key node with `key=True`); the deepest node reached when the path goes further."""
    node = root
    path = list(path)
    for i, step in enumerate(path):
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in _pairs(node) if _scalar_key(k) == str(step)), None)
            if pair is None:
                return node
            node = pair[0] if key and i == len(path) - 1 else pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and 0 <= step < len(node.value):
            node = node.value[step]
        else:
            return node
    return node


def _issue(root: yaml.Node | None, path: list[Any], message: str, *, key: bool = False,
           line_offset: int = 0) -> BlueprintIssue:
    node = _find(root, path, key=key)
    if node is None:
        return BlueprintIssue(None, None, _path_text(path), message)
    mark = node.start_mark
    line = mark.line + 1 + line_offset
    return BlueprintIssue(line, mark.column + 1 if not line_offset else None, _path_text(path), message)


def _check_tree(root: yaml.Node) -> list[BlueprintIssue]:
    """Count nodes (aliases expanded, so an alias bomb stops here) and report text-less or duplicate keys."""
    issues: list[BlueprintIssue] = []
    visits = 0
    stack: list[tuple[yaml.Node, tuple[Any, ...]]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        visits += 1
        if visits > MAX_NODES:
            raise _TooBig
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag.endswith(":merge"):
                    stack.append((v, path))
                    continue
                name = _scalar_key(k)
                if name is None or not k.tag.endswith(":str"):
                    issues.append(BlueprintIssue(k.start_mark.line + 1, k.start_mark.column + 1, _path_text(path),
                                                 "keys must be text (put quotes around it)"))
                    continue
                if name in seen:
                    issues.append(BlueprintIssue(k.start_mark.line + 1, k.start_mark.column + 1,
                                                 _path_text((*path, name)), f"duplicate key '{name}'"))
                seen.add(name)
                stack.append((v, (*path, name)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((child, (*path, i)) for i, child in enumerate(node.value))
    return issues


def _too_deep(source: str) -> BlueprintIssue | None:
    """Nesting deeper than MAX_DEPTH, found from the event stream (composing such a document would recurse)."""
    depth = 0
    for event in yaml.parse(source, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                mark, message = event.start_mark, f"the blueprint nests more than {MAX_DEPTH} levels deep"
                if mark is None:
                    return BlueprintIssue(None, None, "", message)
                return BlueprintIssue(mark.line + 1, mark.column + 1, "", message)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return None


def _bad_scalar(root: yaml.Node | None) -> yaml.Node | None:
    """The first scalar (in source order) the safe loader cannot build."""
    probe = yaml.SafeLoader("")
    try:
        stack: list[yaml.Node] = [root] if root is not None else []
        seen: set[int] = set()
        bad: list[yaml.Node] = []
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, yaml.ScalarNode):
                build = yaml.SafeLoader.yaml_constructors.get(node.tag)
                if build is not None:
                    try:
                        build(probe, node)
                    except (ValueError, OverflowError, TypeError, yaml.YAMLError):
                        bad.append(node)
            elif isinstance(node, yaml.MappingNode):
                stack.extend(n for pair in node.value for n in pair)
            elif isinstance(node, yaml.SequenceNode):
                stack.extend(node.value)
        return min(bad, key=lambda n: (n.start_mark.line, n.start_mark.column), default=None)
    finally:
        probe.dispose()


def _unreadable_value(root: yaml.Node | None, error: Exception) -> BlueprintIssue:
    node = _bad_scalar(root)
    if node is None:
        return BlueprintIssue(None, None, "", "the blueprint holds a value that cannot be read")
    text = node.value if isinstance(node.value, str) else ""
    shown = text if len(text) <= 40 else text[:37] + "..."
    return BlueprintIssue(node.start_mark.line + 1, node.start_mark.column + 1, "",
                          f"'{shown}' cannot be read as a value (quote it to use it as text)")


def _parse(source: str) -> tuple[Any, yaml.Node | None, list[BlueprintIssue]]:
    if len(source.encode("utf-8", errors="replace")) > MAX_SOURCE_BYTES:
        too_big = f"the blueprint is larger than {MAX_SOURCE_BYTES // 1000} kB"
        return None, None, [BlueprintIssue(None, None, "", too_big)]
    try:
        loader = yaml.SafeLoader(source)
    except yaml.reader.ReaderError as e:  # a control character: the reader refuses the text before parsing
        line = source.count("\n", 0, max(e.position, 0)) + 1
        column = e.position - (source.rfind("\n", 0, max(e.position, 0)) + 1) + 1
        what = f"#x{e.character:04x}" if isinstance(e.character, int) else repr(e.character)
        return None, None, [BlueprintIssue(line, column, "", f"the blueprint holds a control character ({what}): "
                                                             "remove it")]
    root: yaml.Node | None = None
    try:
        deep = _too_deep(source)
        if deep is not None:
            return None, None, [deep]
        root = loader.get_single_node()
        if root is None:
            return None, None, [BlueprintIssue(1, 1, "", "the blueprint is empty")]
        try:
            tree_issues = _check_tree(root)
        except _TooBig:
            return None, root, [BlueprintIssue(None, None, "", f"the blueprint has more than {MAX_NODES} elements "
                                                                  "(aliases included)")]
        if tree_issues:
            return None, root, tree_issues
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        message = ": ".join(p for p in (e.context, e.problem) if p) or "not valid YAML"
        if mark is None:
            return None, None, [BlueprintIssue(None, None, "", f"YAML syntax error: {message}")]
        return None, None, [BlueprintIssue(mark.line + 1, mark.column + 1, "", f"YAML syntax error: {message}")]
    except yaml.YAMLError as e:
        return None, None, [BlueprintIssue(None, None, "", f"YAML syntax error: {e}")]
    except (ValueError, OverflowError, TypeError) as e:
        # a scalar the loader cannot build: an integer of thousands of digits, a date like 2024-02-30
        return None, root, [_unreadable_value(root, e)]
    finally:
        loader.dispose()
    return data, root, []


# --- schema errors in words ---------------------------------------------------------------------------------------
_TYPE_WORDS = {
    "object": "a mapping (key: value)",
    "array": "a list",
    "string": "text",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "null": "empty",
}


def _label(path: list[Any]) -> str:
    if not path:
        return "the blueprint"
    last = path[-1]
    if isinstance(last, int):
        parent = str(path[-2]) if len(path) > 1 else "list"
        return f"{parent} item {last + 1}"
    if len(path) >= 2 and path[-2] in ("servers", "parameters"):
        return f"{'server' if path[-2] == 'servers' else 'parameter'} '{last}'"
    return str(last)


def _schema_issues(data: Any, root: yaml.Node | None) -> list[BlueprintIssue]:
    out: list[BlueprintIssue] = []
    for error in _VALIDATOR.iter_errors(data):
        path = list(error.absolute_path)
        label = _label(path)
        kind, expected, schema = error.validator, error.validator_value, error.schema
        custom = schema.get("x-message") if isinstance(schema, dict) else None
        if kind == "additionalProperties" and isinstance(error.instance, dict):
            known = sorted((schema.get("properties") or {}).keys())
            for extra in error.instance:
                if extra in known:
                    continue
                close = difflib.get_close_matches(str(extra), known, n=1, cutoff=0.6)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (expected one of: {', '.join(known)})"
                out.append(_issue(root, [*path, extra], f"unknown key '{extra}'{hint}", key=True))
            continue
        if "propertyNames" in error.relative_schema_path:
            # a key of the mapping at `path` is not a valid name (the error's instance is the key)
            name = error.instance
            out.append(_issue(root, [*path, name], f"'{name}': {custom or 'not a valid name'}", key=True))
            continue
        if kind == "required":
            missing = [r for r in expected if r not in error.instance]
            for name in missing:
                out.append(_issue(root, path, f"{label} needs '{name}'"))
            continue
        if kind == "type":
            types = expected if isinstance(expected, list) else [expected]
            words = " or ".join(str(_TYPE_WORDS.get(t, t)) for t in types)
            message = custom if custom and "string" in types else f"{label} must be {words}"
        elif kind == "minimum":
            message = f"{label} must be at least {expected}"
        elif kind == "maximum":
            message = f"{label} must be at most {expected}"
        elif kind == "minLength":
            message = f"{label} must not be empty" if expected == 1 else f"{label} needs at least {expected} characters"
        elif kind == "maxLength":
            message = f"{label} is too long (at most {expected} characters)"
        elif kind == "minItems":
            message = f"{label} needs at least {expected} item" + ("s" if expected > 1 else "")
        elif kind == "maxItems":
            message = f"{label} takes at most {expected} items"
        elif kind == "minProperties":
            message = f"{label} needs at least {expected} entr" + ("ies" if expected > 1 else "y")
        elif kind == "maxProperties":
            message = f"{label} takes at most {expected} entries"
        elif kind == "enum":
            message = f"{label} must be one of: {', '.join(str(v) for v in expected)}"
        elif kind == "const":
            message = custom or f"{label} must be {expected}"
        elif kind == "uniqueItems":
            message = f"{label} lists the same entry twice"
        elif kind == "pattern":
            message = custom or f"{label} has the wrong form"
        else:
            message = f"{label}: {error.message}"
        out.append(_issue(root, path, message))
    return out


# --- semantic checks ----------------------------------------------------------------------------------------------
def _org_images(organization: Organization) -> list[Image]:
    return list(Image.objects.all_tenants().filter(organization_id=organization.pk).order_by("name", "version"))


def _org_profiles(organization: Organization) -> list[HardwareProfile]:
    return list(HardwareProfile.objects.all_tenants().filter(organization_id=organization.pk))


def resolve_image(ref: str, images: list[Image]) -> tuple[Image | None, str]:
    """An image by "name version" or "name" (case-insensitive); (None, why) when it cannot be told."""
    wanted = ref.strip().lower()
    exact = [i for i in images if f"{i.name} {i.version}".strip().lower() == wanted]
    if len(exact) == 1:
        return exact[0], ""
    by_name = [i for i in images if i.name.lower() == wanted]
    if len(by_name) == 1:
        return by_name[0], ""
    if len(exact) > 1 or len(by_name) > 1:
        versions = ", ".join(i.version or "(none)" for i in (exact or by_name))
        example = f"{ref} {versions.split(', ')[0]}"
        return None, f"image '{ref}' has several versions ({versions}): give the version, e.g. '{example}'"
    names = sorted({str(i) for i in images})
    close = difflib.get_close_matches(ref, names, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return None, f"unknown image '{ref}'{hint}: images are named by 'name' or 'name version'"


def resolve_profile(ref: str, profiles: list[HardwareProfile]) -> tuple[HardwareProfile | None, str]:
    wanted = ref.strip().lower()
    found = next((p for p in profiles if p.slug == wanted), None) or next(
        (p for p in profiles if p.name.lower() == wanted), None
    )
    if found is not None:
        return found, ""
    names = sorted({p.slug for p in profiles})
    close = difflib.get_close_matches(wanted, names, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return None, f"unknown hardware profile '{ref}'{hint}"


def _check_value(param: dict[str, Any], value: Any) -> str:
    """'' when `value` suits the parameter, else what is wrong."""
    kind = param["type"]
    if kind == "string" and not isinstance(value, str):
        return "must be text"
    if kind == "boolean" and not isinstance(value, bool):
        return "must be true or false"
    if kind == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
        return "must be a whole number"
    if kind == "number" and (isinstance(value, bool) or not isinstance(value, int | float)):
        return "must be a number"
    if kind == "choice" and value not in (param.get("choices") or []):
        return "must be one of: " + ", ".join(str(c) for c in param.get("choices") or [])
    if kind in ("integer", "number"):
        if param.get("min") is not None and value < param["min"]:
            return f"must be at least {param['min']}"
        if param.get("max") is not None and value > param["max"]:
            return f"must be at most {param['max']}"
    return ""


def _check_parameters(params: dict[str, Any], root: yaml.Node | None) -> list[BlueprintIssue]:
    out: list[BlueprintIssue] = []
    for name, param in params.items():
        base = ["parameters", name]
        kind = param["type"]
        for key in ("default", "min", "max"):
            if isinstance(param.get(key), float) and not math.isfinite(param[key]):
                out.append(_issue(root, [*base, key], f"{key} of parameter '{name}' must be a finite number"))
        if kind not in ("integer", "number"):
            for bound in ("min", "max"):
                if bound in param:
                    out.append(_issue(root, [*base, bound], f"{bound} applies to integer and number parameters only",
                                      key=True))
        elif "min" in param and "max" in param and param["min"] > param["max"]:
            out.append(_issue(root, [*base, "max"], f"max of parameter '{name}' is below its min"))
        if kind == "integer":
            for bound in ("min", "max"):
                value = param.get(bound)
                if value is not None and not isinstance(value, int):
                    out.append(_issue(root, [*base, bound], f"{bound} of parameter '{name}' must be a whole number"))
        if kind == "choice" and "choices" not in param:
            out.append(_issue(root, base, f"parameter '{name}' of type choice needs 'choices'"))
        if kind != "choice" and "choices" in param:
            out.append(_issue(root, [*base, "choices"], "choices apply to choice parameters only", key=True))
        if "default" in param:
            problem = _check_value(param, param["default"])
            if problem:
                out.append(_issue(root, [*base, "default"], f"default of parameter '{name}' {problem}"))
    return out


def _user_data_line(root: yaml.Node | None, path: list[Any], text: str, index: int) -> int:
    """How many lines below the node's mark the character at `index` of a block scalar lies."""
    node = _find(root, path)
    if isinstance(node, yaml.ScalarNode) and node.style in ("|", ">"):
        return 1 + text[:index].count("\n")
    return 0


def _check_servers(
    servers: dict[str, Any], params: dict[str, Any], organization: Organization, root: yaml.Node | None
) -> tuple[list[BlueprintIssue], dict[str, tuple[Image, HardwareProfile]]]:
    out: list[BlueprintIssue] = []
    resolved: dict[str, tuple[Image, HardwareProfile]] = {}
    images, profiles = _org_images(organization), _org_profiles(organization)
    for name, server in servers.items():
        base = ["servers", name]
        image, why_image = resolve_image(server["image"], images)
        if image is None:
            out.append(_issue(root, [*base, "image"], why_image))
        profile, why_profile = resolve_profile(server["profile"], profiles)
        if profile is None:
            out.append(_issue(root, [*base, "profile"], why_profile))
        if image is not None and profile is not None:
            resolved[name] = (image, profile)
        count = server.get("count", 1)
        if isinstance(count, str):
            ref = COUNT_REF_RE.match(count)
            pname = ref.group(1) if ref else ""
            if pname not in params:
                out.append(_issue(root, [*base, "count"], f"count refers to unknown parameter '{pname}'"))
            elif params[pname]["type"] != "integer":
                out.append(_issue(root, [*base, "count"], f"count refers to parameter '{pname}', which is not an "
                                                          "integer parameter"))
            else:
                param = params[pname]
                if param.get("min") is not None and param["min"] < 1:
                    out.append(_issue(root, ["parameters", pname, "min"],
                                      f"parameter '{pname}' is used as a count: its min must be at least 1"))
                if param.get("max") is not None and param["max"] > MAX_INSTANCES:
                    message = f"parameter '{pname}' is used as a count: its max must be at most {MAX_INSTANCES}"
                    out.append(_issue(root, ["parameters", pname, "max"], message))
                default = param.get("default")
                if isinstance(default, int) and not isinstance(default, bool) and not 1 <= default <= MAX_INSTANCES:
                    message = (f"parameter '{pname}' is used as a count: its default must be between 1 and "
                               f"{MAX_INSTANCES}")
                    out.append(_issue(root, ["parameters", pname, "default"], message))
        user_data = server.get("user_data", "")
        for match in ANY_BRACES_RE.finditer(user_data):
            offset = _user_data_line(root, [*base, "user_data"], user_data, match.start())
            inner = match.group(1).strip()
            output = OUTPUT_REF_RE.fullmatch(match.group(0))
            if output:
                other, attr = output.groups()
                if other not in server.get("depends_on", []):
                    out.append(_issue(root, [*base, "user_data"], f"user_data uses an output of server '{other}': "
                                      f"add '{other}' to depends_on so it is created first", line_offset=offset))
                elif attr not in OUTPUTS:
                    out.append(_issue(root, [*base, "user_data"], f"user_data: server outputs are "
                                      f"{', '.join(OUTPUTS)}, not '{attr}'", line_offset=offset))
            elif not re.fullmatch(PARAM_NAME, inner):
                out.append(_issue(root, [*base, "user_data"], f"user_data: only {{{{ name }}}} substitutions are "
                                  f"supported, not '{{{{{match.group(1)}}}}}'", line_offset=offset))
            elif inner not in params:
                out.append(_issue(root, [*base, "user_data"], f"user_data refers to unknown parameter '{inner}'",
                                  line_offset=offset))
        for i, port in enumerate(server.get("ports", [])):
            if isinstance(port, dict) and "cidr" in port:
                try:
                    ipaddress.ip_network(port["cidr"], strict=False)
                except ValueError:
                    out.append(_issue(root, [*base, "ports", i, "cidr"], f"'{port['cidr']}' is not a network "
                                                                         "(e.g. 10.0.0.0/8)"))
        for i, dep in enumerate(server.get("depends_on", [])):
            if dep == name:
                out.append(_issue(root, [*base, "depends_on", i], f"server '{name}' cannot depend on itself"))
            elif dep not in servers:
                close = difflib.get_close_matches(dep, list(servers), n=1, cutoff=0.6)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                out.append(_issue(root, [*base, "depends_on", i], f"depends_on names unknown server '{dep}'{hint}"))
    out.extend(_check_cycles(servers, root))
    return out, resolved


def _check_cycles(servers: dict[str, Any], root: yaml.Node | None) -> list[BlueprintIssue]:
    graph = {n: [d for d in s.get("depends_on", []) if d in servers and d != n] for n, s in servers.items()}
    state: dict[str, int] = {}  # 1 visiting, 2 done
    for start in graph:
        if state.get(start):
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        trail: list[str] = []
        while stack:
            node, i = stack.pop()
            if i == 0:
                state[node] = 1
                trail.append(node)
            if i < len(graph[node]):
                stack.append((node, i + 1))
                nxt = graph[node][i]
                if state.get(nxt) == 1:
                    cycle = [*trail[trail.index(nxt):], nxt]
                    return [_issue(root, ["servers", nxt, "depends_on"],
                                   "dependency cycle: " + " → ".join(cycle))]
                if not state.get(nxt):
                    stack.append((nxt, 0))
            else:
                state[node] = 2
                trail.pop()
    return []


def server_order(spec: dict[str, Any]) -> list[str]:
    """Server names with dependencies first (alphabetical among equals)."""
    servers = spec.get("servers") or {}
    done: list[str] = []
    remaining = sorted(servers)
    while remaining:
        ready = [n for n in remaining if all(d in done for d in servers[n].get("depends_on", []))]
        if not ready:  # a cycle (never in a validated spec): keep the rest alphabetical
            done.extend(remaining)
            break
        done.append(ready[0])
        remaining.remove(ready[0])
    return done


def _normalize(data: dict[str, Any], resolved: dict[str, tuple[Image, HardwareProfile]]) -> dict[str, Any]:
    params = {}
    for name, p in (data.get("parameters") or {}).items():
        params[name] = {k: p[k] for k in ("type", "default", "min", "max", "choices") if k in p}
        params[name]["description"] = p.get("description", "")
    servers = {}
    for name, s in data["servers"].items():
        image, profile = resolved[name]
        ports = [
            {"port": p, "cidr": "0.0.0.0/0", "protocol": "tcp"} if isinstance(p, int)
            else {"port": p["port"], "cidr": p.get("cidr", "0.0.0.0/0"), "protocol": p.get("protocol", "tcp")}
            for p in s.get("ports", [])
        ]
        servers[name] = {
            "image": s["image"],
            "image_id": image.pk,
            "profile": s["profile"],
            "profile_id": profile.pk,
            "count": s.get("count", 1),
            "placement": {"spread": (s.get("placement") or {}).get("spread", "none")},
            "networks": list(s.get("networks", ["default"])),
            "ports": ports,
            "user_data": s.get("user_data", ""),
            "depends_on": list(s.get("depends_on", [])),
        }
    return {"version": 1, "description": data.get("description", ""), "parameters": params, "servers": servers}


def validate_blueprint(
    source: str, *, organization: Organization
) -> tuple[dict[str, Any] | None, list[BlueprintIssue]]:
    """(the validated document, []) or (None, the problems, line-numbered, in source order)."""
    if not isinstance(source, str):
        return None, [BlueprintIssue(None, None, "", "the blueprint must be text")]
    data, root, issues = _parse(source)
    if issues:
        return None, issues
    issues = _schema_issues(data, root)
    if not issues:
        params = data.get("parameters") or {}
        issues = _check_parameters(params, root)
        server_issues, resolved = _check_servers(data["servers"], params, organization, root)
        issues += server_issues
    if issues:
        unique = list(dict.fromkeys(issues))
        unique.sort(key=lambda i: (i.line is None, i.line or 0, i.column or 0))
        return None, unique
    return _normalize(data, resolved), []


# --- parameters and user data -------------------------------------------------------------------------------------
def _coerce(param: dict[str, Any], value: Any) -> Any:
    """A launch form sends text: read it as the parameter's type (values of the right type pass unchanged)."""
    kind = param["type"]
    if not isinstance(value, str) or kind == "string":
        return value
    text = value.strip()
    if kind == "integer":
        try:
            return int(text)
        except ValueError:
            return value
    if kind == "number":
        try:
            number = float(text)
        except ValueError:
            return value
        return int(number) if number.is_integer() and "." not in text else number
    if kind == "boolean":
        lowered = text.lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        return value
    if kind == "choice":
        for choice in param.get("choices") or []:
            if str(choice) == text:
                return choice
    return value


def parameter_values(spec: dict[str, Any], given: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """The value of every parameter (given, else its default) and the problems (missing, wrong type, unknown)."""
    given = dict(given or {})
    params = spec.get("parameters") or {}
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name in sorted(set(given) - set(params)):
        problems.append(f"unknown parameter '{name}'")
    for name, param in params.items():
        if name in given:
            value = _coerce(param, given[name])
        elif "default" in param:
            value = param["default"]
        else:
            problems.append(f"parameter '{name}' needs a value")
            continue
        problem = _check_value(param, value)
        if problem:
            problems.append(f"parameter '{name}' {problem}")
            continue
        values[name] = value
    return values, problems


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def rendered_user_data_size(template: str, values: dict[str, Any]) -> int:
    """The length `render_user_data` would return, found without building the text (a long value used many times
    must not make a huge string)."""
    size = len(template)
    for match in REFERENCE_RE.finditer(template):
        if match.group(1) in values:
            size += len(_text(values[match.group(1)])) - len(match.group(0))
    return size


def render_user_data(template: str, values: dict[str, Any]) -> str:
    """Replace each `{{ name }}` by the parameter's value. Nothing else is interpreted; an unknown name stays."""
    return REFERENCE_RE.sub(lambda m: _text(values[m.group(1)]) if m.group(1) in values else m.group(0), template)


def render_outputs(text: str, outputs: dict[str, dict[str, str]]) -> str:
    """Replace each `{{ server.output }}` by that server's output (addresses known once it runs); unknown ones stay."""

    def value(match: re.Match[str]) -> str:
        return outputs.get(match.group(1), {}).get(match.group(2), match.group(0))

    return OUTPUT_REF_RE.sub(value, text)


def server_count(server: dict[str, Any], values: dict[str, Any]) -> int | None:
    count = server.get("count", 1)
    if isinstance(count, int) and not isinstance(count, bool):
        return count
    ref = COUNT_REF_RE.match(str(count))
    value = values.get(ref.group(1)) if ref else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- preview ------------------------------------------------------------------------------------------------------
@dataclass
class PreviewInstance:
    name: str  # "web-1"
    server: str  # "web"
    image: Image | None
    profile: HardwareProfile | None
    account: CloudAccount | None = None
    region: str = ""
    flavor: Flavor | None = None
    price_per_hour: Decimal | None = None
    user_data: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def placed(self) -> bool:
        return self.flavor is not None and not self.problems


@dataclass
class BlueprintPreview:
    instances: list[PreviewInstance]
    hourly: Decimal
    monthly: Decimal
    problems: list[str]  # every problem that blocks a launch (per instance ones included, once)
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def priced(self) -> bool:
        """Every instance has a known price."""
        return all(i.price_per_hour is not None for i in self.instances)


def _spread(fits: list[ProfileFit], spread: str) -> list[ProfileFit]:
    """The account-regions instances go to in turn: cheapest first, one per account (accounts), every
    account-region (regions) or only the cheapest (none)."""
    ordered = cheapest(fits)
    if not ordered:
        return []
    if spread == "accounts":
        seen: set[int] = set()
        per_account = []
        for fit in ordered:
            if fit.account.pk not in seen:
                seen.add(fit.account.pk)
                per_account.append(fit)
        return per_account
    if spread == "regions":
        return ordered
    return ordered[:1]


def blueprint_preview(
    spec: dict[str, Any],
    *,
    organization: Organization,
    project: Project | None = None,
    parameters: dict[str, Any] | None = None,
    require_copies: bool = True,
) -> BlueprintPreview:
    """Where each instance would run and what it would cost. With `project`, only the account-regions granted to
    it; with `require_copies` (the default), only where the image has an available copy."""
    values, problems = parameter_values(spec, parameters)
    servers = spec.get("servers") or {}
    image_ids = {s.get("image_id") for s in servers.values()}
    profile_ids = {s.get("profile_id") for s in servers.values()}
    org_id = organization.pk
    images = {i.pk: i for i in Image.objects.all_tenants().filter(organization_id=org_id, pk__in=image_ids)}
    profile_rows = HardwareProfile.objects.all_tenants().filter(organization_id=org_id, pk__in=profile_ids)
    profiles = {p.pk: p for p in profile_rows}
    copies: set[tuple[int, int, str]] = set()
    if require_copies and images:
        rows = ImageCopy.objects.all_tenants().filter(
            organization_id=organization.pk, image_id__in=list(images), state=ImageCopy.State.AVAILABLE
        )
        copies = set(rows.values_list("image_id", "account_id", "region"))
    # one mapping per architecture, for every profile at once
    fits_by_arch: dict[str, dict[int, list[ProfileFit]]] = {}
    for arch in sorted({i.arch for i in images.values()}):
        fits_by_arch[arch] = profile_mappings(profiles.values(), organization=organization, arch=arch, project=project)

    instances: list[PreviewInstance] = []
    total = 0
    for name in server_order(spec):
        server = servers[name]
        image, profile = images.get(server.get("image_id")), profiles.get(server.get("profile_id"))
        count = server_count(server, values)
        if count is None:
            problems.append(f"{name}: count {server.get('count')!r} has no value")
            continue
        if count < 1:
            problems.append(f"{name}: count must be at least 1, not {count}")
            continue
        if count > MAX_INSTANCES:
            problems.append(f"{name}: count {count} is too many: a launch makes at most {MAX_INSTANCES} servers")
            continue
        total += count
        if total > MAX_INSTANCES:
            problems.append(f"a launch makes at most {MAX_INSTANCES} servers")
            break
        server_problems: list[str] = []
        targets: list[ProfileFit] = []
        if image is None:
            server_problems.append(f"image '{server.get('image')}' no longer exists")
        if profile is None:
            server_problems.append(f"hardware profile '{server.get('profile')}' no longer exists")
        if image is not None and profile is not None:
            fits = [f for f in fits_by_arch[image.arch][profile.pk] if f.flavor is not None]
            all_fits = fits_by_arch[image.arch][profile.pk]
            if not all_fits:
                where = f"granted to {project.name}" if project is not None else "of the organisation"
                server_problems.append(f"{name}: no active cloud account {where}")
            elif not fits:
                server_problems.append(f"{name}: " + "; ".join(f.reason for f in all_fits[:3]))
            else:
                placeable = [f for f in fits if not require_copies or (image.pk, f.account.pk, f.region) in copies]
                if not placeable:
                    where = ", ".join(f.where for f in cheapest(fits)[:3])
                    server_problems.append(f"image {image} has no copy in {where}: push it first")
                targets = _spread(placeable, (server.get("placement") or {}).get("spread", "none"))
        template = server.get("user_data", "")
        size = rendered_user_data_size(template, values)
        if size > MAX_USER_DATA:
            server_problems.append(f"{name}: user_data would be {size} characters once the parameters are filled "
                                   f"in: at most {MAX_USER_DATA}")
            user_data = ""
        else:
            user_data = render_user_data(template, values)
        for i in range(count):
            instance = PreviewInstance(f"{name}-{i + 1}", name, image, profile, user_data=user_data,
                                       problems=list(server_problems))
            if targets:
                fit = targets[i % len(targets)]
                instance.account, instance.region, instance.flavor = fit.account, fit.region, fit.flavor
                instance.price_per_hour = fit.price_per_hour
            instances.append(instance)
        problems.extend(server_problems)
    hourly = sum((i.price_per_hour for i in instances if i.price_per_hour is not None), Decimal(0))
    monthly = (hourly * HOURS_PER_MONTH).quantize(Decimal("0.01"))
    return BlueprintPreview(instances, hourly, monthly, list(dict.fromkeys(problems)), values)


def referenced_images(spec: dict[str, Any]) -> list[int]:
    return sorted({s.get("image_id") for s in (spec.get("servers") or {}).values() if s.get("image_id")})


# --- services -----------------------------------------------------------------------------------------------------
BLUEPRINT_FIELDS = ("name", "slug", "description", "latest_version")


def _invalid(issues: list[BlueprintIssue]) -> ServiceError:
    error = ServiceError({"source": [str(i) for i in issues]})
    error.issues = issues  # type: ignore[attr-defined]  # the structured form, for editors that mark lines
    return error


def _clean_name(name: Any) -> tuple[str, str]:
    name = name.strip() if isinstance(name, str) else ""
    if not name:
        raise ServiceError({"name": "Give the blueprint a name."})
    if len(name) > 100:
        raise ServiceError({"name": "Use at most 100 characters."})
    slug = slugify(name)[:100]
    if not slug:
        raise ServiceError({"name": "Use letters or digits in the name."})
    return name, slug


def _clean_description(description: Any) -> str:
    description = description.strip() if isinstance(description, str) else ""
    if len(description) > 1000:
        raise ServiceError({"description": "Use at most 1000 characters."})
    return description


def _unique_slug(organization_id: int, slug: str, exclude_pk: int | None = None) -> None:
    clash = Blueprint.objects.all_tenants().filter(organization_id=organization_id, slug=slug)
    if exclude_pk is not None:
        clash = clash.exclude(pk=exclude_pk)
    if clash.exists():
        raise ServiceError({"name": "This organisation already has a blueprint with this name."})


@transaction.atomic
def blueprint_create(
    *, actor: User, project: Project, name: str, source: str, description: str = "", note: str = ""
) -> Blueprint:
    """A blueprint and its version 1. An invalid source stores nothing."""
    if not get_access(actor).can("images.manage", organization_id=project.organization_id, project_id=project.pk):
        raise PermissionDenied("You are not allowed to do this (images.manage).")
    if project.is_archived:
        raise ServiceError({"project": f"{project.name} is archived."})
    name, slug = _clean_name(name)
    description = _clean_description(description)
    _unique_slug(project.organization_id, slug)
    organization = Organization.objects.all_tenants().get(pk=project.organization_id)
    spec, issues = validate_blueprint(source, organization=organization)
    if spec is None:
        raise _invalid(issues)
    try:
        with transaction.atomic():
            blueprint = Blueprint.objects.create(
                organization_id=project.organization_id, project=project, name=name, slug=slug,
                description=description, latest_version=1, created_by=actor,
            )
    except IntegrityError:
        raise ServiceError({"name": "A blueprint with this name was just created: choose another name."}) from None
    BlueprintVersion.objects.create(
        organization_id=project.organization_id, blueprint=blueprint, number=1, source=source, spec=spec,
        note=(note or "")[:300], created_by=actor,
    )
    audit.record(actor=actor, verb="blueprint.create", obj=blueprint,
                 after=audit.snapshot(blueprint, BLUEPRINT_FIELDS), extra={"note": (note or "")[:300]})
    return blueprint


@transaction.atomic
def blueprint_version_save(*, actor: User, blueprint: Blueprint, source: str, note: str = "") -> BlueprintVersion:
    """A new version (latest + 1). Saved versions never change; the same source as the latest saves nothing."""
    require_change(actor, blueprint)
    blueprint = Blueprint.objects.all_tenants().select_for_update().get(pk=blueprint.pk)
    latest = BlueprintVersion.objects.all_tenants().filter(
        blueprint_id=blueprint.pk, number=blueprint.latest_version
    ).first()
    if latest is not None and latest.source == source:
        return latest
    organization = Organization.objects.all_tenants().get(pk=blueprint.organization_id)
    spec, issues = validate_blueprint(source, organization=organization)
    if spec is None:
        raise _invalid(issues)
    number = blueprint.latest_version + 1
    version = BlueprintVersion.objects.create(
        organization_id=blueprint.organization_id, blueprint=blueprint, number=number, source=source, spec=spec,
        note=(note or "")[:300], created_by=actor,
    )
    blueprint.latest_version = number
    blueprint.save(update_fields=["latest_version", "updated_at"])
    audit.record(actor=actor, verb="blueprint.version_save", obj=blueprint, project_id=blueprint.project_id,
                 before={"latest_version": number - 1}, after={"latest_version": number},
                 extra={"note": (note or "")[:300]})
    return version


_UNSET: Any = object()


@transaction.atomic
def blueprint_update(*, actor: User, blueprint: Blueprint, name: Any = _UNSET, description: Any = _UNSET) -> Blueprint:
    require_change(actor, blueprint)
    blueprint = Blueprint.objects.all_tenants().select_for_update().get(pk=blueprint.pk)
    before = audit.snapshot(blueprint, BLUEPRINT_FIELDS)
    if name is not _UNSET:
        blueprint.name, slug = _clean_name(name)
        if slug != blueprint.slug:
            _unique_slug(blueprint.organization_id, slug, exclude_pk=blueprint.pk)
            blueprint.slug = slug
    if description is not _UNSET:
        blueprint.description = _clean_description(description)
    after = audit.snapshot(blueprint, BLUEPRINT_FIELDS)
    if after != before:
        blueprint.save()
        audit.record(actor=actor, verb="blueprint.update", obj=blueprint, before=before, after=after)
    return blueprint


def _grant_target(actor: User, blueprint: Blueprint, user: User) -> None:
    # handing out edit rights takes the role (an object grant does not let its holder pass it on)
    if not get_access(actor).can_on("images.manage", blueprint):
        raise PermissionDenied("You are not allowed to do this (images.manage).")
    if blueprint.organization_id not in get_access(user).organization_ids:
        raise ServiceError({"user": f"{user.username} is not a member of this organisation."})


@transaction.atomic
def blueprint_grant_manage(*, actor: User, blueprint: Blueprint, user: User) -> Blueprint:
    """Let one user (e.g. a designer of another project) edit this blueprint and save versions."""
    _grant_target(actor, blueprint, user)
    assign_perm("catalog.manage_blueprint", user, blueprint)
    audit.record(actor=actor, verb="blueprint.grant_manage", obj=blueprint, extra={"user": user.username})
    return blueprint


@transaction.atomic
def blueprint_revoke_manage(*, actor: User, blueprint: Blueprint, user: User) -> Blueprint:
    if not get_access(actor).can_on("images.manage", blueprint):
        raise PermissionDenied("You are not allowed to do this (images.manage).")
    remove_perm("catalog.manage_blueprint", user, blueprint)
    audit.record(actor=actor, verb="blueprint.revoke_manage", obj=blueprint, extra={"user": user.username})
    return blueprint
