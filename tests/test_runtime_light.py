"""What a plugin user installs (`make demo`, `make setup`) has no torch: the runtime stays light."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from conftest import ROOT

HEAVY = ("torch", "sentence-transformers", "transformers", "segment-anything", "onnxscript")


def requirement_names(path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[<>=\[ ;]", line)[0].lower())
    return names


def test_make_demo_in_a_fresh_clone_never_installs_torch(tmp_path):
    plan = subprocess.run(
        ["make", "-n", "demo", f"VENV={tmp_path / 'venv'}"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert plan.returncode == 0, plan.stderr
    installs = [ln for ln in plan.stdout.splitlines() if "pip install" in ln]
    assert installs and all("-r requirements.txt" in ln for ln in installs), installs
    assert not any(x in plan.stdout for x in ("requirements-export", "requirements-dev", "text-encoder"))
    assert not requirement_names(ROOT / "requirements.txt") & set(HEAVY)


def test_the_text_encoder_ships_int8_within_the_size_limit_and_runs_without_torch():
    folder = ROOT / "models" / "text_encoder"
    doc = json.loads((folder / "text_encoder.json").read_text())
    model = folder / doc["model"]
    assert model.stat().st_size <= 25 * 2**20 and doc["int8_min_cosine_to_fp32"] >= 0.99
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any import of torch fails
        "from engine.prompts import TextEncoder\n"
        "e = TextEncoder().embed(['woods', 'trees', 'lake'])\n"
        "import numpy as np\n"
        "print(float(e[0] @ e[1]), float(e[0] @ e[2]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    woods_trees, woods_lake = map(float, proc.stdout.split())
    assert woods_trees > woods_lake  # it still means something
