"""docs/config.md, generated from the config dataclasses by scripts/gen_config_docs.py: current, and complete."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_config_docs.py"


def generator():
    """The script as a module (it is not part of the dtrain package)."""
    spec = importlib.util.spec_from_file_location("gen_config_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_committed_config_reference_is_current():
    gen = generator()
    path = ROOT / gen.OUT
    if not path.is_file() or path.read_text(encoding="utf-8") != gen.render():
        pytest.fail(f"{gen.OUT} is stale: run `{gen.COMMAND}` and commit it", pytrace=False)


def test_every_field_of_every_config_dataclass_has_a_docstring():
    gen = generator()
    module = gen.Module(ROOT / "dtrain" / "config.py")
    missing = [f"{name}.{f.name}" for name, cls in module.classes.items()
               for f in module.section(cls, name).fields if not f.doc]
    assert not missing, ("fields without a docstring (write one as a string on the line under each field in "
                         f"dtrain/config.py): {', '.join(missing)}")


def test_generation_reads_the_source_and_imports_nothing_of_dtrain():
    # So it works while a recipe's dependencies are missing or half-rewritten, and dtrain never loads it.
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('g', {str(SCRIPT)!r})\n"
            "g = sys.modules['g'] = importlib.util.module_from_spec(spec); spec.loader.exec_module(g); g.render()\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'dtrain', 'recipes', 'torch', 'yaml', 'numpy'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
