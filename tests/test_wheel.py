"""lfm as a researcher installs it: a wheel built from a clean copy of the checkout (and one built from its sdist),
pip-installed into a fresh environment that already has a torch, then run from a folder outside the checkout.

The fresh venv sees this test environment's packages (torch, transformers, lm-eval, panel, ...) through a
folder of links on its path, so that everything runs offline: pip resolves "lfm[app,eval]" against them, as it
does in a GPU box's environment, and can fetch nothing (--no-index, only the lfm wheel to find). lfm itself
(this checkout's editable install) is left out of that folder: the only lfm the venv can import is the wheel's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
from test_notebooks import PARAMS, REQUIRED_CHECKS, _organism_checks

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "01_neuron_changes.ipynb"
KERNEL = "lfm-wheel-test"


def run(cmd: list, *, cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def outside_env(venv: Path | None = None) -> dict:
    """The environment of a user's shell: no PYTHONPATH (which would put a checkout first), offline, and a pip
    without this machine's settings (its configuration files, PIP_* variables)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
           and not k.startswith("PIP_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PIP_CONFIG_FILE=os.devnull,
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    if venv is not None:
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def checkout_files() -> list[str]:
    """The checkout's files as a fresh clone has them (tracked or new, not ignored, not deleted)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return sorted(f for f in out.split("\0") if f and (ROOT / f).is_file())


def wheel_members(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as z:
        return {n: z.read(n) for n in z.namelist() if not n.split("/")[0].endswith(".dist-info")}


def wheel_metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as z:
        return z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """{files, wheel, sdist, sdist_wheel}: the two wheels and the sdist, built offline with this environment's
    setuptools (as `make install` builds lfm) from a copy of the checkout's files."""
    tmp = tmp_path_factory.mktemp("wheel")
    src, env = tmp / "src", outside_env()
    files = checkout_files()
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    run([*pip_wheel, "-w", tmp / "wheel", src], cwd=tmp, env=env)
    # the PEP 517 hook `python -m build --sdist` calls (build itself is not in the lock)
    sdist_build = run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                       "build_meta.build_sdist(sys.argv[1])", tmp / "sdist"], cwd=src, env=env)
    assert "Warning" not in sdist_build.stderr, f"setuptools warns about pyproject.toml: {sdist_build.stderr[-3000:]}"
    (sdist,) = (tmp / "sdist").glob("lfm-*.tar.gz")
    run([*pip_wheel, "-w", tmp / "sdist-wheel", sdist], cwd=tmp, env=env)
    (wheel,) = (tmp / "wheel").glob("lfm-*.whl")
    (sdist_wheel,) = (tmp / "sdist-wheel").glob("lfm-*.whl")
    return {"files": files, "wheel": wheel, "sdist": sdist, "sdist_wheel": sdist_wheel}


@pytest.fixture(scope="module")
def installed(built, tmp_path_factory) -> dict:
    """A fresh venv that has this environment's packages but lfm (torch among them), into which pip installs
    "lfm[app,eval]" from the sdist's wheel. Returns {venv, site, torch_before, torch_after, pip}."""
    tmp = tmp_path_factory.mktemp("venv")
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp, env=outside_env())
    python = venv / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp,
                    env=outside_env()).stdout.strip())
    # this environment's packages, lfm (its editable install: dist-info, finder, .pth) left out; in a folder
    # named site-packages, as installed packages are: dill (hashing datasets' functions for lm-eval) pickles
    # a module's functions by reference only when its path looks installed
    view = tmp / "environment" / "site-packages"
    view.mkdir(parents=True)
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not re.match(r"(__editable__[._])?lfm[-_.]", entry.name) and entry.suffix != ".pth":
            (view / entry.name).symlink_to(entry)
    (site / "test-environment-packages.pth").write_text(f"{view}\n")
    env = outside_env(venv)
    torch_files = ("import json, os, importlib.metadata as m; d = m.distribution('torch'); "
                   "print(json.dumps({'version': d.version, 'at': str(d.locate_file('')), 'files': "
                   "{str(f): [os.stat(d.locate_file(f)).st_size, os.stat(d.locate_file(f)).st_mtime_ns] "
                   "for f in d.files if os.path.exists(d.locate_file(f))}}))")
    before = json.loads(run([python, "-c", torch_files], cwd=tmp, env=env).stdout)
    pip = run([python, "-m", "pip", "install", "--no-index", "--find-links", built["sdist_wheel"].parent,
               "lfm[app,eval]"], cwd=tmp, env=env)
    after = json.loads(run([python, "-c", torch_files], cwd=tmp, env=env).stdout)
    return {"venv": venv, "site": site, "env": env, "torch_before": before, "torch_after": after, "pip": pip.stdout}


def test_wheel_holds_the_package_and_its_data_and_the_sdist_builds_the_same_wheel(built):
    package = {f for f in built["files"] if f.startswith("lfm/")}
    wheel, sdist_wheel = wheel_members(built["wheel"]), wheel_members(built["sdist_wheel"])
    assert set(wheel) == package, (f"missing from the wheel: {sorted(package - set(wheel))[:10]}; "
                                   f"not in the checkout: {sorted(set(wheel) - package)[:10]}")
    for data in ("lfm/data/organism/tuned/model.safetensors", "lfm/data/organism/items/visual.jsonl",
                 "lfm/data/organism/tasks/lmms_eval/_organism_visual_yaml", "lfm/data/realpair/results.json"):
        assert wheel[data] == (ROOT / data).read_bytes(), data
    assert sdist_wheel == wheel, "the wheel built from the sdist differs from the one built from the checkout"
    version = re.search(r'__version__ = "([^"]+)"', (ROOT / "lfm" / "_version.py").read_text()).group(1)
    assert built["wheel"].name == f"lfm-{version}-py3-none-any.whl"
    requires = re.findall(r"^Requires-Dist: (torch\b.*)$", wheel_metadata(built["wheel"]), re.M)
    assert requires == ["torch>=2.1"], f"lfm must accept the torch a user already has: {requires}"


def test_pip_install_into_an_env_with_torch_keeps_that_torch(installed):
    before, after = installed["torch_before"], installed["torch_after"]
    assert after["version"] == before["version"] and after["at"] == before["at"], (before["version"], after["version"])
    assert len(before["files"]) > 1000 and after["files"] == before["files"], "pip changed torch's files"
    assert not (installed["site"] / "torch").exists(), "pip installed a second torch into the venv"
    assert re.search(r"^Requirement already satisfied: torch", installed["pip"], re.M), installed["pip"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> tuple[int, str]:
    """The first HTTP answer of the server ``proc`` at ``url`` (status, body), waiting for it to listen."""
    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None, f"lfm explore exited {proc.returncode}: {log.read_text()[-3000:]}"
        try:
            # with a cookie jar, as a browser: the explorer answers its token with a cookie and a redirect
            opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
            with opener.open(url, timeout=60) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""
        except OSError:
            assert time.time() < deadline, f"lfm explore did not answer {url}: {log.read_text()[-3000:]}"
            time.sleep(0.5)


@pytest.mark.slow  # ~35 s: five lfm commands, a server and a notebook
def test_installed_wheel_runs_the_embedded_default_outside_the_checkout(installed, built, tmp_path):
    venv, env, lfm = installed["venv"], installed["env"], installed["venv"] / "bin" / "lfm"
    python = venv / "bin" / "python"
    version = built["wheel"].name.split("-")[1]
    assert run([lfm, "--version"], cwd=tmp_path, env=env).stdout.strip() == f"lfm {version}"

    where = json.loads(run([python, "-c", "import json, lfm, lfm.organism as o; print(json.dumps("
                            "[lfm.__file__, str(o.tuned_dir()), str(o.ORGANISM_DIR)]))"], cwd=tmp_path, env=env).stdout)
    assert all(Path(p).is_relative_to(installed["site"] / "lfm") for p in where), where

    shipped = json.loads((ROOT / "lfm" / "data" / "organism" / "results.json").read_text())["shipped"]["tuned"]
    res = json.loads(run([lfm, "organism", "eval", "--json"], cwd=tmp_path, env=env).stdout)
    assert res["tasks"] == pytest.approx(shipped["tasks"]) and res["failures"] == shipped["failures"]

    run([lfm, "eval", "--suite", "organism", "--limit", "2", "--out", "eval.json"], cwd=tmp_path, env=env)
    harness = json.loads((tmp_path / "eval.json").read_text())
    assert harness["model"] == where[1] and 0 <= harness["LA"] <= 1 and 0 <= harness["VA"] <= 1, harness

    run([lfm, "compare", "--items", "organism", "--limit", "2", "--out", "compare", "--quiet"], cwd=tmp_path, env=env)
    transitions = json.loads((tmp_path / "compare" / "transitions.json").read_text())
    assert transitions["recipe"]["items"] == "organism" and transitions["stages"], transitions

    port, log, token = free_port(), tmp_path / "explore.log", "wheel-test-token"
    with open(log, "w") as out:
        proc = subprocess.Popen([lfm, "explore", "--port", str(port)], cwd=tmp_path, env={**env, "LFM_TOKEN": token},
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            refused, _ = http_status(f"http://127.0.0.1:{port}/explorer", proc, log)
            status, body = http_status(f"http://127.0.0.1:{port}/explorer?token={token}", proc, log)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    # without the token: refused before any session; with it: the page, built on the default pair
    assert refused == 403, (refused, log.read_text()[-3000:])
    assert status == 200 and "Locate-then-Merge explorer" in body, (status, body[:500], log.read_text()[-3000:])

    # notebook 01 with papermill, on a kernel of the venv's python (the wheel's lfm)
    run([python, "-m", "ipykernel", "install", "--prefix", venv, "--name", KERNEL], cwd=tmp_path, env=env)
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, tmp_path / NOTEBOOK)
    params = [a for k, v in PARAMS[NOTEBOOK].items() for a in ("-p", k, str(v))]
    run([python, "-m", "papermill", NOTEBOOK, "out.ipynb", "-k", KERNEL, "--cwd", tmp_path, *params],
        cwd=tmp_path, env=env)
    nb = json.loads((tmp_path / "out.ipynb").read_text())
    printed = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    for check in REQUIRED_CHECKS[NOTEBOOK] + _organism_checks(NOTEBOOK, {}):
        assert f"CHECK passed: {check}" in printed, check
