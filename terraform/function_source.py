"""Builds the Cloud Functions source archive Terraform uploads: build/function-source.zip.

    python terraform/function_source.py [OUT.zip]      (or: make function-source)

The archive holds what the entry points import and nothing more:
- `main.py` at its root: functions/main.py as it is (the entry points, or imports of them);
- `requirements.txt`: functions/requirements.txt (the control plane's pins, no TensorFlow);
- the `modelrun` package, whole (with its package data, e.g. the OpenAPI document);
- the `dashboard` package: the static site the drift function publishes (read with importlib.resources);
- the modules of `serving` that code reachable from main.py imports (the prediction journal's format lives
  there), found by reading the imports, including those inside functions.
Entries are sorted and stamped with one fixed time, so the same sources give the same bytes (and the same
md5, which names the object Terraform uploads: a change redeploys, no change does not).
Only the standard library is used, so any Python 3.11 runs it.
"""

from __future__ import annotations

import ast
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHOLE_PACKAGES = ("modelrun", "dashboard")
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def module_file(name: str) -> Path | None:
    """The repo file of module `name` (a package's __init__.py), or None when it is not in the repo."""
    path = ROOT.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def imported_names(path: Path, module: str) -> set[str]:
    """Every module name `path` imports anywhere (top level or inside functions), relative ones resolved;
    `from a import b` yields both `a` and `a.b` (b may be a submodule)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def reachable_modules(main: Path) -> dict[str, Path]:
    """Repo modules reachable from `main` through imports: {module name: file}, parent packages included."""
    found: dict[str, Path] = {}
    todo = [("main", main)]
    while todo:
        module, path = todo.pop()
        if module in found:
            continue
        found[module] = path
        for name in imported_names(path, module):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                parent = ".".join(parts[:i])
                parent_file = module_file(parent)
                if parent_file is not None and parent not in found:
                    todo.append((parent, parent_file))
    return found


def archive_files() -> dict[str, Path]:
    """{name in the archive: repo file}."""
    main = ROOT / "functions" / "main.py"
    files = {"main.py": main, "requirements.txt": ROOT / "functions" / "requirements.txt"}
    for package in WHOLE_PACKAGES:
        for path in sorted((ROOT / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files[path.relative_to(ROOT).as_posix()] = path
    for module, path in reachable_modules(main).items():
        if module.split(".")[0] == "serving":
            files[path.relative_to(ROOT).as_posix()] = path
    return files


def build(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, path in sorted(archive_files().items()):
            info = zipfile.ZipInfo(name, FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, path.read_bytes())
    tmp.replace(out)
    return out


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print("usage: python terraform/function_source.py [OUT.zip]", file=sys.stderr)
        return 2
    out = Path(argv[0]) if argv else ROOT / "build" / "function-source.zip"
    print(build(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
