"""The documentation site builds with `mkdocs build --strict`: a broken link, a missing page or a docstring
reference that does not resolve fails here, as it fails the published build."""

import os
import subprocess
import sys

from conftest import ROOT


def test_site_builds_strictly(tmp_path):
    """docs/installation.md's `mkdocs build --strict --site-dir site`, into a scratch folder."""
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for page in ("index.html", "api/index.html", "training/index.html", "experiments/ablations/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("convit.attention.GPSA", "convit.weights.read_checkpoint", "convit.locality.nonlocality"):
        assert f'id="{name}"' in api, name  # the reference holds the public names, from their docstrings


def test_readme_links_resolve():
    """README is read on the code host, outside the site: each relative link names a file (and heading) that exists."""
    import re

    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        path, _, anchor = link.partition("#")
        assert (ROOT / path).exists(), link
        if anchor:
            headings = re.findall(r"^#+ (.+)$", (ROOT / path).read_text(), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
            assert anchor in slugs, link
