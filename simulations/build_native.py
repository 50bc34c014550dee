"""Compile the simulator's engine (engine.py, class `Replica`) with mypyc: ~1.6x the speed.

    python -m vllm_autoscaler.simulations.build_native [--force]        (or: make native)

mypyc names a compiled module after its file's path, and the source folders install under
other names (simulations/ is vllm_autoscaler.simulations), so engine.py is copied into a
staged tree as vllm_autoscaler/simulations/_engine_native.py, with the SHA-256 of the source
appended, compiled there, and the extension files are copied next to engine.py (gitignored).
native.py uses them only while that hash matches engine.py. Skips when they already do.
Needs mypy (which ships mypyc: `pip install -e '.[native]'`), a C compiler and Python's headers.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENGINE_SOURCE = HERE / "engine.py"
PACKAGE = "vllm_autoscaler.simulations"
COMPILED_MODULE = f"{PACKAGE}._engine_native"
# What mypy needs beside engine.py for type information (engine's own imports from the
# package); staged as they are, not compiled.
TYPE_INFO_MODULES = ("vllm_autoscaler.controller.profile",)
SETUP_PY = """\
from setuptools import setup
from mypyc.build import mypycify

# Type errors in the staged modules engine.py imports (untyped yaml, ...) are not ours to fix.
extensions = mypycify([{path!r}, "--follow-imports=silent"], opt_level="3")
for ext in extensions:
    # No fused multiply-add: results must be bit-identical to the pure-Python engine.
    ext.extra_compile_args.append("-ffp-contract=off")
setup(name="engine-native", ext_modules=extensions, script_args=["build_ext", "--inplace"])
"""


class BuildError(RuntimeError):
    """The compiled engine cannot be built; the message says what is missing."""


def source_sha256(path: Path = ENGINE_SOURCE) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def built_sha256() -> str | None:
    """The hash the compiled engine next to engine.py was built from; None if there is none."""
    try:
        return getattr(importlib.import_module(COMPILED_MODULE), "SOURCE_SHA256", None)
    except Exception:  # not built, or built for another Python: both mean rebuild
        return None


def check_toolchain() -> None:
    missing = []
    try:
        import mypyc.build  # noqa: F401
        import setuptools  # noqa: F401
    except ImportError as e:
        missing.append(f"{e.name} (pip install -e '.[native]'; mypy ships mypyc)")
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    compiler = shlex.split(cc)[0]
    if shutil.which(compiler) is None:
        missing.append(f"a C compiler: {compiler!r} not found on PATH (Debian/Ubuntu: "
                       "apt-get install build-essential)")
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.exists():
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        missing.append(f"Python's C headers: {headers} not found (Debian/Ubuntu: "
                       f"apt-get install python{version}-dev)")
    if missing:
        raise BuildError("cannot compile the simulator's engine; missing: " + "; ".join(missing))


def stage(root: Path, sha256: str) -> Path:
    """The staged tree under `root`; returns the path of the module to compile."""
    package_dir = root / "vllm_autoscaler"
    for name in (*TYPE_INFO_MODULES, COMPILED_MODULE):
        parts = name.split(".")
        for depth in range(1, len(parts)):
            init = root.joinpath(*parts[:depth], "__init__.py")
            init.parent.mkdir(parents=True, exist_ok=True)
            init.touch()
    for name in TYPE_INFO_MODULES:
        source = Path(importlib.import_module(name).__file__)
        shutil.copyfile(source, root.joinpath(*name.split(".")).with_suffix(".py"))
    target = package_dir / "simulations" / "_engine_native.py"
    target.write_text(
        ENGINE_SOURCE.read_text()
        + "\n\n# The engine.py this was compiled from (simulations/native.py checks it).\n"
        + f'SOURCE_SHA256 = "{sha256}"\n'
    )
    return target


def build(force: bool = False) -> bool:
    """Compile engine.py unless the compiled copy already matches it; True if it built."""
    sha256 = source_sha256()
    if not force and built_sha256() == sha256:
        print(f"compiled engine up to date ({sha256[:12]})")
        return False
    check_toolchain()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="engine-native-") as tmp:
        root = Path(tmp)
        target = stage(root, sha256)
        (root / "setup.py").write_text(SETUP_PY.format(path=str(target.relative_to(root))))
        done = subprocess.run(
            [sys.executable, "setup.py"], cwd=root, capture_output=True, text=True
        )
        if done.returncode:
            raise BuildError(f"mypyc failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
        built = sorted(target.parent.glob("_engine_native*.so"))
        if not built:
            raise BuildError(f"mypyc made no extension module:\n{done.stdout[-4000:]}")
        # mypyc makes a runtime library (_engine_native__mypyc) and the module that loads
        # it; the library goes first. Replace, not overwrite: a running simulation may have
        # the old files mapped.
        for path in sorted(built, key=lambda p: "__mypyc" not in p.name):
            partial = HERE / (path.name + ".partial")
            shutil.copyfile(path, partial)
            os.replace(partial, HERE / path.name)
    check = subprocess.run(
        [sys.executable, "-c", f"import {COMPILED_MODULE} as m; print(m.SOURCE_SHA256)"],
        capture_output=True, text=True,
    )  # fmt: skip
    if check.stdout.strip() != sha256:
        raise BuildError(f"the compiled engine does not load:\n{check.stderr[-4000:]}")
    names = ", ".join(p.name for p in built)
    print(f"compiled engine built in {time.perf_counter() - started:.1f} s: {names} in {HERE}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)
    try:
        build(args.force)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
