"""From the plugin zip to a first map inside QGIS, with no terminal (issue #30).

A fresh QGIS profile in a temporary HOME with no checkout, no .venv and no LANDSEG_PYTHON: the zip is installed
into the profile and enabled, QGIS starts under xvfb, and tests/qgis_scripts/first_use.py presses the panel's own
"Set up LandSeg" (pip from what this machine's pip serves) and runs land cover on the bundled sample. Then the
same profile runs qgis_process. The offline set-up (a wheelhouse, the package index unreachable) and a failed
set-up run the same engine_setup.set_up outside QGIS.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, URBAN

QGIS = "/usr/bin/qgis"
QGIS_PROCESS = "/usr/bin/qgis_process.bin"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (Path(QGIS).exists() and Path(QGIS_PROCESS).exists() and shutil.which("xvfb-run")),
        reason="needs QGIS and xvfb-run",
    ),
]
ARTIFACTS = ROOT / "tests" / "artifacts"  # docs/panel_first_use.png and docs/qgis_first_use.png are copies


def clean_env(home: Path) -> dict[str, str]:
    """The environment of someone who never saw the checkout: no LANDSEG_*, no PYTHONPATH, no venv."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "QT_QPA_PLATFORM")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANDSEG_", "QGIS_")) and k not in drop}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p]
    env.update(HOME=str(home), PATH=os.pathsep.join(path), XDG_RUNTIME_DIR=str(home))
    return env


@pytest.fixture(scope="module")
def profile(plugin_zip, tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("new_user")
    plugins = home / ".local/share/QGIS/QGIS3/profiles/default/python/plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(plugin_zip) as zf:
        zf.extractall(plugins)
    env = clean_env(home)
    proc = subprocess.run(
        [QGIS_PROCESS, "plugins", "enable", "landseg_plugin"],
        env=dict(env, QT_QPA_PLATFORM="offscreen"), capture_output=True, text=True, timeout=300, cwd=home,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"home": home, "env": env, "plugin_dir": plugins / "landseg_plugin"}


@pytest.fixture(scope="module")
def first_use(profile, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("first_use")
    env = dict(profile["env"], LANDSEG_FIRST_USE_OUT=str(out), LANDSEG_FIRST_USE_SAMPLE=str(URBAN))
    cmd = ["xvfb-run", "-a", "-s", "-screen 0 1440x960x24", QGIS, "--nologo", "--noversioncheck"]
    cmd += ["--code", str(ROOT / "tests" / "qgis_scripts" / "first_use.py")]
    proc = subprocess.run(cmd, env=env, cwd=profile["home"], capture_output=True, text=True, timeout=1500)
    report_path = out / "report.json"
    said = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert report_path.exists(), f"QGIS exited {proc.returncode} without a report:\n{said}"
    report = json.loads(report_path.read_text())
    assert "error" not in report, report["error"]
    return {"report": report, "out": out}


def test_first_use_in_qgis_sets_up_the_engine_and_maps_the_sample(profile, first_use):
    r = first_use["report"]
    assert Path(r["plugin_dir"]) == profile["plugin_dir"]  # the installed zip, not the checkout
    assert "not set up" in r["engine_before"] and r["button_before"] == "Set up LandSeg"
    assert r["setup_error"] is None, r["setup_error"]
    env_dir = profile["home"] / ".local/share/landseg/engine-env"
    assert str(env_dir) in r["engine_after"] and r["button_after"] == "Repair / update"
    assert "CPU" in r["engine_after"]  # no GPU here: it says so and why
    assert r["run_error"] is None, r["run_error"]
    assert "layers added" in r["run_status"] and "ran on CPU" in r["run_status"]
    assert {"urban_river_rgb", "land cover polygons", "class map", "confidence"} <= set(r["layers"]), r["layers"]
    record = json.loads((env_dir / "landseg-env.json").read_text())
    assert record["device"] == "cpu" and "CPUExecutionProvider" in record["providers"]
    assert (profile["home"] / ".local/share/landseg/setup.log").stat().st_size > 1000
    shot = first_use["out"] / "panel_after_first_run.png"
    assert shot.stat().st_size > 5000
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "panel_first_use.png")
    shutil.copy(first_use["out"] / "qgis_after_first_run.png", ARTIFACTS / "qgis_first_use.png")


def test_the_same_profile_runs_qgis_process(profile, first_use, tmp_path):
    out = tmp_path / "out"
    env = dict(profile["env"], QT_QPA_PLATFORM="offscreen")
    proc = subprocess.run(
        [QGIS_PROCESS, "run", "landseg:landcover", f"--INPUT={URBAN}", f"--OUTPUT={out / 'p.gpkg'}",
         f"--OUTPUT_CLASSES={out / 'c.tif'}", f"--OUTPUT_CONFIDENCE={out / 'f.tif'}"],
        env=env, capture_output=True, text=True, timeout=600, cwd=profile["home"],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "p.gpkg").exists() and (out / "c.tif").exists()
    assert "ran on:      CPU" in proc.stdout + proc.stderr


# --- the same set-up outside QGIS: offline from a wheelhouse, and failures --------------------------------------


def run_setup(home: Path, env_extra: dict[str, str], **params) -> subprocess.CompletedProcess:
    """engine_setup.set_up from the installed plugin folder, in a clean environment (as QGIS's Python would)."""
    code = (
        "import json, sys; from pathlib import Path\n"
        "from landseg_plugin.engine_setup import SetupParams, set_up, SetupError\n"
        f"p = SetupParams(env_dir=Path({str(home / 'engine-env')!r}), **{params!r})\n"
        "try:\n    r = set_up(p)\nexcept SetupError as e:\n    print('ERROR', e); sys.exit(2)\n"
        "print(json.dumps(r.record))\n"
    )
    env = dict(clean_env(home), **env_extra, PYTHONPATH=str(home / "plugins"))
    env = {k: v for k, v in env.items() if v is not None}
    return subprocess.run(["/usr/bin/python3", "-c", code], env=env, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def installed_plugin(plugin_zip, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("plugin")
    with zipfile.ZipFile(plugin_zip) as zf:
        zf.extractall(root / "plugins")
    return root


OFFLINE = {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_FIND_LINKS": None}


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wheels") / "wheelhouse"
    proc = subprocess.run(
        ["make", "wheelhouse", f"WHEELHOUSE={folder}"], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(list(folder.glob("*.whl"))) > 20
    return folder.with_suffix(".zip")


def _home(installed_plugin: Path, name: str) -> Path:
    home = installed_plugin / name
    home.mkdir()
    (home / "plugins").symlink_to(installed_plugin / "plugins")
    return home


def test_set_up_from_a_wheelhouse_zip_with_the_index_unreachable(installed_plugin, wheelhouse):
    home = _home(installed_plugin, "offline")
    # An isolated venv (as on Windows and macOS): every wheel must come from the zip.
    proc = run_setup(
        home, OFFLINE, wheelhouse=str(wheelhouse), system_site_packages=False, base_python="/usr/bin/python3"
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["wheelhouse"] == str(wheelhouse) and record["system_site_packages"] is False
    assert (home / "engine-env" / "landseg-env.json").exists()


def test_a_full_disk_is_said_and_leaves_no_environment(installed_plugin, wheelhouse):
    home = _home(installed_plugin, "full")
    small = home / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        proc = subprocess.run(  # the environment goes on the 40 MB disk; it needs ~600 MB
            ["/usr/bin/python3", "-c", "import sys; from pathlib import Path; "
             "from landseg_plugin.engine_setup import SetupParams, set_up, SetupError\n"
             f"try: set_up(SetupParams(env_dir=Path({str(small / 'engine-env')!r}), log_path=Path("
             f"{str(home / 'setup.log')!r}), wheelhouse=Path({str(wheelhouse)!r}), system_site_packages=False, "
             "base_python=Path('/usr/bin/python3')))\nexcept SetupError as e: print('ERROR', e); sys.exit(2)"],
            env={k: v for k, v in dict(clean_env(home), **OFFLINE, PYTHONPATH=str(home / "plugins")).items() if v},
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "disk is full" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
        assert not any(small.iterdir()), list(small.iterdir())  # neither the environment nor its .partial
        assert "No space left" in (home / "setup.log").read_text()
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def test_a_failed_set_up_says_why_in_a_line_keeps_the_log_and_leaves_no_environment(installed_plugin, tmp_path):
    home = _home(installed_plugin, "failing")
    empty = tmp_path / "empty_wheelhouse"
    empty.mkdir()
    proc = run_setup(home, OFFLINE, wheelhouse=str(empty), base_python="/usr/bin/python3")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = proc.stdout.strip().splitlines()[-1]
    assert "pip found no" in line and "setup.log" in line and "Traceback" not in proc.stdout + proc.stderr
    assert not (home / "engine-env").exists() and not (home / "engine-env.partial").exists()
    assert (home / "setup.log").stat().st_size > 200
    # no network at all (the index refused, no wheelhouse): said as such
    proc = run_setup(home, OFFLINE, base_python="/usr/bin/python3")
    assert proc.returncode == 2 and "no network" in proc.stdout, proc.stdout + proc.stderr
    assert not (home / "engine-env").exists()
