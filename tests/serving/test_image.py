"""The Cloud Run image's recipe (no Docker engine here): pins agree with the project's, and the image
runs the server as a non-root user on $PORT."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def pins(path: Path) -> dict[str, str]:
    result = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s#]+)", line.strip())
        if match:
            result[match.group(1).lower()] = match.group(3)
    return result


def test_serving_requirements_are_pinned_like_the_project():
    serving, project = pins(REPO / "serving/requirements.txt"), pins(REPO / "requirements.txt")
    assert "tensorflow-cpu" in serving and "grpcio" in serving
    for name, version in serving.items():
        assert project.get(name) == version, f"{name}: serving pins {version}, requirements.txt {project.get(name)}"
    lines = [line for line in (REPO / "serving/requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert len(lines) == len(serving), "every requirement is pinned with =="


def test_dockerfile():
    text = (REPO / "serving/Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert "RUN pip install -r serving/requirements.txt" in text
    assert re.search(r"^COPY modelrun/ modelrun/$", text, re.M) and re.search(r"^COPY serving/ serving/$", text, re.M)
    user = re.search(r"^USER (\S+)$", text, re.M)
    assert user and user.group(1) not in ("root", "0")
    assert re.search(r"PORT=8080", text)
    assert text.rstrip().splitlines()[-1] == 'CMD ["python", "-m", "serving"]'
