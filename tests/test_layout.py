"""The package's layout: arrows point down only (no circle of imports), read by `scripts/layout.py` from the code."""

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_layout():
    spec = importlib.util.spec_from_file_location("layout", REPO / "scripts" / "layout.py")
    layout = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layout)
    return layout


def test_no_circles_and_no_arrow_up():
    layout = load_layout()
    arrows = layout.graph()
    assert {"photobg.backbones", "photobg.models", "photobg.prepare.card"} <= arrows.keys()  # read from the code
    assert layout.circles(arrows) == [], "rooms that import each other, lazily or not: break the circle"
    assert layout.arrows_up(arrows) == [], "imports from a room to one on its own or a higher floor"


def test_backbone_detection_imports_no_torch(tmp_path):
    # backbones and hub read configs only; detecting a backbone must stay cheap (fast --help, checks before loading).
    code = "import sys, photobg.backbones, photobg.hub; print(sorted({'torch', 'diffusers'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert result.stdout.strip() == "[]"
