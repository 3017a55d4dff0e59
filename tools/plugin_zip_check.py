"""Check a plugin zip against the QGIS plugin repository's rules (plugins.qgis.org/docs/publish and the
PyQGIS cookbook's "Releasing your plugin"): one top folder named like the package, metadata.txt with every field
the repository reads and real values, the icon and a licence file inside, no compiled or generated files.

    python tools/plugin_zip_check.py dist/landseg_plugin.zip [--strict]

Errors fail; warnings (the 25 MB upload limit, placeholder URLs) are printed, and fail too with --strict (what an
upload to plugins.qgis.org needs). Exit 0 when it passes, 1 otherwise, one line per finding.
"""

from __future__ import annotations

import argparse
import configparser
import re
import sys
import zipfile
from pathlib import PurePosixPath

REQUIRED = ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email", "repository")
RECOMMENDED = ("tracker", "homepage", "icon", "changelog", "tags", "category", "experimental", "deprecated")
URL_FIELDS = ("repository", "tracker", "homepage")
COMPILED = re.compile(r"(__pycache__/|\.pyc$|\.pyo$|\.so$|\.dll$|\.dylib$|\.exe$|\.pyd$|/\.git/|\.DS_Store$)")
MAX_MB = 25  # plugins.qgis.org's upload limit
PLACEHOLDER = re.compile(r"example\.(invalid|com|org)|localhost|TODO", re.I)


def check(path: str) -> tuple[list[str], list[str]]:
    errors: list[str] = []
    warnings: list[str] = []
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        tops = {n.split("/", 1)[0] for n in names}
        if len(tops) != 1:
            return [f"{path}: one top folder expected (the plugin package), found {sorted(tops)}"], warnings
        top = tops.pop()
        if not top.isidentifier():
            errors.append(f"{path}: top folder {top!r} is not a Python package name")
        for required in ("__init__.py", "metadata.txt"):
            if f"{top}/{required}" not in names:
                errors.append(f"{path}: {top}/{required} is missing")
        if not any(re.fullmatch(rf"{top}/(LICENSE|LICENCE|COPYING)(\.\w+)?", n) for n in names):
            errors.append(f"{path}: no licence file (LICENSE) in {top}/")
        bad = [n for n in names if COMPILED.search(n)]
        if bad:
            errors.append(f"{path}: compiled or generated files inside, e.g. {bad[0]} ({len(bad)} in all)")
        meta = configparser.ConfigParser(interpolation=None)
        meta.optionxform = str  # the field names are case-sensitive (qgisMinimumVersion)
        try:
            meta.read_string(zf.read(f"{top}/metadata.txt").decode("utf-8"))
            general = meta["general"]
        except (KeyError, configparser.Error, UnicodeDecodeError) as exc:
            return errors + [f"{path}: metadata.txt unreadable ({type(exc).__name__})"], warnings
        for key in REQUIRED:
            if not general.get(key, "").strip():
                errors.append(f"metadata.txt: {key}= is missing or empty")
        for key in RECOMMENDED:
            if not general.get(key, "").strip():
                errors.append(f"metadata.txt: {key}= is missing or empty")
        if not re.fullmatch(r"\d+\.\d+(\.\d+)?", general.get("qgisMinimumVersion", "")):
            errors.append(f"metadata.txt: qgisMinimumVersion={general.get('qgisMinimumVersion')} is not a version")
        icon = general.get("icon", "").strip()
        if icon and f"{top}/{PurePosixPath(icon)}" not in names:
            errors.append(f"metadata.txt: icon={icon} is not in the zip")
        for key in URL_FIELDS:
            value = general.get(key, "")
            if value and not value.startswith(("https://", "http://")):
                errors.append(f"metadata.txt: {key}={value} is not a URL")
            elif PLACEHOLDER.search(value):
                warnings.append(f"metadata.txt: {key}={value} is a placeholder: set the project's real address")
        if PLACEHOLDER.search(general.get("email", "")):
            warnings.append(f"metadata.txt: email={general.get('email')} is a placeholder")
    mb = sum(i.compress_size for i in zipfile.ZipFile(path).infolist()) / 2**20
    if mb > MAX_MB:
        warnings.append(
            f"{path}: {mb:.0f} MB, over plugins.qgis.org's {MAX_MB} MB upload limit (install from ZIP or from a "
            "custom plugin repository works at any size)"
        )
    return errors, warnings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zip")
    parser.add_argument("--strict", action="store_true", help="warnings fail too (an upload to plugins.qgis.org)")
    args = parser.parse_args(argv)
    try:
        errors, warnings = check(args.zip)
    except (OSError, zipfile.BadZipFile) as exc:
        print(f"plugin zip check: {args.zip}: {exc}", file=sys.stderr)
        return 1
    for line in errors:
        print(f"plugin zip check: error: {line}", file=sys.stderr)
    for line in warnings:
        print(f"plugin zip check: warning: {line}", file=sys.stderr)
    failed = bool(errors) or (args.strict and bool(warnings))
    print(f"plugin zip check: {'failed' if failed else 'passed'} ({len(errors)} errors, {len(warnings)} warnings)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
