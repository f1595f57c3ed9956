"""Write docs/config.md, the reference of every config key, from the config dataclasses' source.

    python scripts/gen_config_docs.py           # rewrite docs/config.md
    python scripts/gen_config_docs.py --check   # exit 1 if it is stale (tests/unit/test_config_docs.py does this)

Sources: RunConfig and its sections in dtrain/config.py, and each recipe's `Config` (the `task:` keys) in
recipes/*/__init__.py. Every key is documented once, next to its field: the string literal under a
dataclass field is its description. The files are read with `ast`, never imported, so the reference
builds without torch or a recipe's extras, and nothing here is part of dtrain at run time (a script, not
a module of the package: `dtrain --help` never loads it, and the wheel does not carry it).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = "docs/config.md"
COMMAND = "python scripts/gen_config_docs.py"


@dataclass
class Field:
    name: str
    type: str
    default: str
    doc: str
    section: "Section | None" = None
    """The nested dataclass this field holds (a YAML section of its own), if any."""


@dataclass
class Section:
    name: str
    doc: str
    fields: list[Field] = field(default_factory=list)


class Module:
    """One source file: its dataclasses, module constants and `from X import Y` names, by name."""

    _cache: dict[Path, "Module"] = {}

    def __init__(self, path: Path):
        self.path = path
        self.tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        body = self.tree.body
        self.classes = {n.name: n for n in body if isinstance(n, ast.ClassDef) and _is_dataclass(n)}
        self.constants = {t.id: n.value for n in body if isinstance(n, ast.Assign)
                          for t in n.targets if isinstance(t, ast.Name)}
        self.imports = {a.asname or a.name: n.module for n in body if isinstance(n, ast.ImportFrom) and n.module
                        for a in n.names}

    @classmethod
    def load(cls, path: Path) -> "Module":
        if path not in cls._cache:
            cls._cache[path] = cls(path)
        return cls._cache[path]

    def dataclass(self, name: str) -> tuple["Module", ast.ClassDef] | None:
        """The dataclass `name` means here: defined in this file or imported from this repository."""
        if name in self.classes:
            return self, self.classes[name]
        module = self.imports.get(name)
        if module:
            base = ROOT / module.replace(".", "/")
            for path in (base.with_suffix(".py"), base / "__init__.py"):
                if path.is_file():
                    return Module.load(path).dataclass(name)
        return None

    def section(self, cls: ast.ClassDef, name: str, doc: str = "") -> Section:
        docs = [d for d in (doc, _clean(ast.get_docstring(cls))) if d]
        out = Section(name, "\n\n".join(docs))
        for i, node in enumerate(cls.body):
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            nxt = cls.body[i + 1] if i + 1 < len(cls.body) else None
            fdoc = (_clean(nxt.value.value) if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str) else "")
            f = Field(node.target.id, type_text(node.annotation), self.default_text(node.value), fdoc)
            nested = [self.dataclass(n.id) for n in ast.walk(node.annotation) if isinstance(n, ast.Name)]
            nested = [x for x in nested if x]
            if nested:
                mod, sub = nested[0]
                f.section = mod.section(sub, f"{name}.{f.name}" if name else f.name, fdoc)
                f.type = re.sub(rf"\b{sub.name}\b", "mapping", f.type)  # its keys: the section's table
            out.fields.append(f)
        return out

    def default_text(self, node: ast.expr | None) -> str:
        if node is None:
            return "required"
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("field", "dataclasses.field"):
            kw = {k.arg: k.value for k in node.keywords}
            if "default" in kw:
                return self.default_text(kw["default"])
            factory = kw.get("default_factory")
            if isinstance(factory, ast.Lambda):
                return self.default_text(factory.body)
            if isinstance(factory, ast.Name):
                return {"list": "[]", "dict": "{}"}.get(factory.id, "")  # a dataclass: its own section
            return ast.unparse(node)
        if isinstance(node, ast.Name) and node.id in self.constants:
            return self.default_text(self.constants[node.id])
        try:
            return yaml_text(ast.literal_eval(node))
        except (ValueError, TypeError, SyntaxError):
            return ast.unparse(node)


def _is_dataclass(node: ast.ClassDef) -> bool:
    return any(ast.unparse(d.func if isinstance(d, ast.Call) else d) in ("dataclass", "dataclasses.dataclass")
               for d in node.decorator_list)


def _clean(doc: str | None) -> str:
    return inspect.cleandoc(doc) if doc else ""


def yaml_text(value) -> str:
    """A default as it is written in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_text(v) for v in value) + "]"
    if isinstance(value, str):
        return value if value else '""'
    return repr(value)


def type_text(node: ast.expr) -> str:
    """An annotation in YAML terms: Literal choices as `a | b`, None as null."""
    if isinstance(node, ast.Constant):
        return yaml_text(node.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return f"{type_text(node.left)} | {type_text(node.right)}"
    if isinstance(node, ast.Subscript):
        items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if ast.unparse(node.value) in ("Literal", "typing.Literal"):
            return " | ".join(type_text(i) for i in items)
        return f"{ast.unparse(node.value)}[{', '.join('...' if _is_ellipsis(i) else type_text(i) for i in items)}]"
    if isinstance(node, ast.Name) and node.id == "Any":
        return "mapping"
    return ast.unparse(node)


def _is_ellipsis(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is Ellipsis


# --------------------------------------------------------------------------- Markdown


def _md(text: str) -> str:
    """Docstring text for Markdown: `<` and `*` escaped outside code spans (a `<class>` would vanish as HTML)."""
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(p if p.startswith("`") else re.sub(r"([<*])", r"\\\1", p) for p in parts)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{_cell(text)}`" if text else ""


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def table(section: Section, prefix: str) -> list[str]:
    rows = []
    for f in section.fields:
        if f.section and f.default == "":  # a section without a value of its own: its table follows
            continue
        default = f.default if f.default == "required" else _code(f.default)
        rows.append(f"| {_code(prefix + f.name)} | {_code(f.type)} | {default} | {_cell(_md(f.doc))} |")
    if not rows:
        return []
    return ["| key | type | default | description |", "| --- | --- | --- | --- |", *rows, ""]


def render_section(section: Section, title: str, prefix: str) -> list[str]:
    lines = [f"## {title}", ""]
    if section.doc:
        lines += [_md(section.doc), ""]
    lines += table(section, prefix)
    for f in section.fields:
        if f.section:
            lines += render_section(f.section, f"`{f.section.name}`", f.section.name + ".")
    return lines


def recipes() -> list[tuple[str, Module, ast.ClassDef]]:
    out = []
    for init in sorted(ROOT.glob("recipes/*/__init__.py")):
        module = Module.load(init)
        if "Config" in module.classes:
            out.append((init.parent.name, module, module.classes["Config"]))
    return out


def render() -> str:
    """The whole of docs/config.md."""
    Module._cache.clear()  # a fresh read of the sources every call
    config = Module.load(ROOT / "dtrain" / "config.py")
    run = config.section(config.classes["RunConfig"], "")
    shipped = recipes()
    lines = [
        "# Configuration reference",
        "",
        f"> Generated from the config dataclasses by `scripts/gen_config_docs.py`; do not edit by hand. "
        f"Regenerate: `{COMMAND}`.",
        "",
        "Every key of a run's YAML, with its type, default and meaning. A key path such as `train.batch_size`",
        "is written nested in the YAML (`train:` then `batch_size: 64` under it) or given as an override on the",
        "command line (`dtrain run CONFIG train.batch_size=64`). Sources: `dtrain/config.py` for the run's",
        "sections, each recipe's `Config` for its `task:` keys. Unknown keys, wrong types and bad values are",
        "all reported at once, one line per key, before anything starts.",
        "",
        "Sections: " + ", ".join(
            f"[`{f.name}`](#{_anchor(f.name)})" for f in run.fields if f.section
        ) + "; `task:` per recipe: " + ", ".join(
            f"[`{name}`](#{_anchor(f'task for recipe {name}')})" for name, _, _ in shipped) + ".",
        "",
    ]
    lines += render_section(Section("", "", [f for f in run.fields if not f.section]), "Top level", "")
    for f in run.fields:
        if f.section:
            lines += render_section(f.section, f"`{f.name}`", f.name + ".")
    for name, module, cls in shipped:
        doc = _clean(ast.get_docstring(module.tree)).split("\n\n")[0]
        section = module.section(cls, "task", f"`recipe: {name}` (`recipes/{name}/`). {doc}")
        lines += render_section(section, f"`task` for recipe `{name}`", "task.")
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help=f"exit 1 if {OUT} is not what would be written")
    args = parser.parse_args(argv)
    text, path = render(), ROOT / OUT
    if args.check:
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            print(f"{OUT} is stale: run `{COMMAND}` and commit it", file=sys.stderr)
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
