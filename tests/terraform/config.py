"""The Terraform configuration as python-hcl2 reads it, for tests that tie it to the code.

python-hcl2 keeps an expression as its source text: a reference is `${google_storage_bucket.models.name}`
and a string literal keeps its quotes (`"gcs"`); `value()` strips those quotes (`load` strips them from
block labels and keys).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import hcl2

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "terraform"
MAIN = ROOT / "functions" / "main.py"


@dataclass
class Config:
    resources: dict[str, dict[str, dict]] = field(default_factory=dict)  # type -> name -> body
    locals: dict = field(default_factory=dict)
    variables: dict[str, dict] = field(default_factory=dict)
    outputs: dict[str, dict] = field(default_factory=dict)

    def resource(self, kind: str, name: str) -> dict:
        return self.resources[kind][name]


def load() -> Config:
    config = Config()
    for path in sorted(TERRAFORM.glob("*.tf")):
        with path.open() as handle:
            parsed = _clean(hcl2.load(handle))
        for block in parsed.get("resource", []):
            for kind, named in block.items():
                config.resources.setdefault(kind, {}).update(named)
        for block in parsed.get("locals", []):
            config.locals.update(block)
        for block in parsed.get("variable", []):
            config.variables.update(block)
        for block in parsed.get("output", []):
            config.outputs.update(block)
    return config


def _clean(node):
    """Block labels and keys without their quotes, and without python-hcl2's `__is_block__` markers."""
    if isinstance(node, dict):
        return {value(k): _clean(v) for k, v in node.items() if k != "__is_block__"}
    if isinstance(node, list):
        return [_clean(item) for item in node]
    return node


def value(text):
    """A string literal's value without its quotes; anything else (a reference, a number) unchanged."""
    if isinstance(text, str) and len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text


def one(block):
    """A nested block, which python-hcl2 gives as a list of one."""
    assert isinstance(block, list) and len(block) == 1, block
    return block[0]


def main_py_names() -> set[str]:
    """The names functions/main.py binds at its top level: functions it defines and names it imports
    (entry points may live in the package and be imported into main.py)."""
    names = set()
    for node in ast.parse(MAIN.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names
