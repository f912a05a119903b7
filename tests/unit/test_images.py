"""How the images are built (the Dockerfiles are read, not built: no Docker here): every base image can
come from a mirror (Docker Hub is not reachable from many ACK regions) and be pinned by digest through a
build argument, every pip install is held to constraints.txt, and the build context leaves out what the
images do not copy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = ["training_image/Dockerfile", "serving_image/Dockerfile", "serving_image/Dockerfile.fetch"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_base_image_is_a_build_argument_with_the_default_documented(dockerfile: str) -> None:
    text = (REPO / dockerfile).read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert froms, dockerfile
    for image in froms:
        match = re.fullmatch(r"\$\{(\w+)\}", image)
        assert match, f"{dockerfile}: FROM {image} cannot be pointed at a mirror"
        assert re.search(rf"^ARG {match[1]}=\S+", text, re.MULTILINE), f"{dockerfile}: no default for {image}"
        # The comment shows how to give a mirror pinned by digest.
        assert re.search(rf"--build-arg {match[1]}=\S+@sha256:", text), dockerfile


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_pip_install_of_dependencies_uses_the_constraints(dockerfile: str) -> None:
    text = (REPO / dockerfile).read_text()
    for line in re.findall(r"pip install [^\n\\]*", text):
        if "--no-deps ." in line:
            continue  # the provider itself, from the build context, no dependencies
        assert "-c /tmp/constraints.txt" in line, f"{dockerfile}: {line}"
    if "pip install -c" in text:
        assert "COPY constraints.txt /tmp/constraints.txt" in text


def test_dockerignore_keeps_out_what_no_image_copies() -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".airflow", "tests"} <= ignored
    copied = set()
    for dockerfile in DOCKERFILES:
        for sources in re.findall(r"^COPY\s+(.+)\s+\S+$", (REPO / dockerfile).read_text(), re.MULTILINE):
            copied.update(s.rstrip("*") for s in sources.split())
    assert copied and not copied & ignored, copied & ignored


def test_the_oss_secret_example_does_not_suggest_rrsa() -> None:
    """The OSS backend reads an AccessKey pair only: RRSA (or STS) may be named only as unsupported."""
    text = (REPO / "deploy" / "oss-secret.example.yaml").read_text()
    for line in text.splitlines():
        if "RRSA" in line:
            assert "not supported" in line, line
