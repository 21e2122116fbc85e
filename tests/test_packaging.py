"""The built wheel is a working gateway: it ships its templates, and an installed copy serves /admin/."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ADMIN_SECRET = "admin-packaging-7c41e0"

# Runs in a fresh interpreter whose only aisix_flask is the installed wheel: prints where the package
# came from and what GET /admin/ answered.
PROBE = """
import json, sys
import aisix_flask
app = aisix_flask.create_app({"AISIX_CONFIG": sys.argv[1]})
answer = app.test_client().get("/admin/", headers={"Authorization": "Bearer " + sys.argv[2]})
app.extensions["aisix"].ledger.close(10)
print(json.dumps({"file": aisix_flask.__file__, "status": answer.status_code,
                  "body": answer.get_data(as_text=True)}))
"""


def pip(*args: str, cwd: Path) -> None:
    """Run the venv's pip offline; a failure shows pip's own output."""
    command = [
        sys.executable,
        "-m",
        "pip",
        *args,
        "--disable-pip-version-check",
        "--no-index",
        "--no-cache-dir",
    ]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(args[:1])} failed:\n{done.stdout}\n{done.stderr}"


def test_installed_wheel_serves_the_usage_page(tmp_path):
    # A copy: building in the checkout would leave build/ and *.egg-info behind.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "aisix_flask", src / "aisix_flask", ignore=shutil.ignore_patterns("__pycache__"))

    # --no-build-isolation: setuptools comes from the venv (requirements-dev.txt), not the network.
    pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src), cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("aisix_flask-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert "aisix_flask/templates/usage.html" in archive.namelist()

    site = tmp_path / "site"
    pip("install", "--no-deps", "--target", str(site), str(wheel), cwd=tmp_path)

    config = tmp_path / "config.yaml"
    key_hash = hashlib.sha256(ADMIN_SECRET.encode()).hexdigest()
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "gateway": {
                    "usage": {
                        "database_url": f"sqlite:///{tmp_path}/usage.db",
                        "journal": f"{tmp_path}/journal.db",
                    },
                    "ratelimit": {"storage_url": f"sqlite:///{tmp_path}/ratelimit.db"},
                    "admin_keys": [{"display_name": "admin", "key_hash": key_hash}],
                },
                "provider_keys": [],
                "models": [],
                "api_keys": [],
            }
        )
    )
    # An empty working directory: neither the checkout nor the source copy is importable from there,
    # and the venv's site-packages (sys.executable's) supplies the dependencies.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", PROBE, str(config), ADMIN_SECRET],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert Path(seen["file"]).resolve().is_relative_to(site.resolve()), seen["file"]
    assert seen["status"] == 200, seen["body"][:2000]
    assert 'id="total-requests"' in seen["body"]
