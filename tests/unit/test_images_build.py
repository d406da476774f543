"""Image recipes, the apt sources a build uses, and placing builds in a data dir (no build
runs here: the guest tests build the real image)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from tests.helpers import write_fake_image
from vpsd.hypervisor.base import DriverError
from vpsd.hypervisor.images import build, recipes, store

DEBIAN_SOURCES = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main

Types: deb
URIs: https://deb.nodesource.com/node_20.x
Suites: nodistro
Components: main

Enabled: no
Types: deb
URIs: http://mirror.example/debian
Suites: bookworm
Components: main

Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
"""


def test_host_sources_keep_only_the_suites_debian_repositories(tmp_path: Path) -> None:
    (tmp_path / "debian.sources").write_text(DEBIAN_SOURCES)
    (tmp_path / "other.list").write_text(
        "deb [arch=amd64 signed-by=/k.gpg] http://ftp.example/debian bookworm main contrib\n"
        "deb http://ftp.example/debian trixie main\n"
        "# deb http://commented.example/debian bookworm main\n"
    )
    (tmp_path / "ignored.txt").write_text("deb http://not.a.source/debian bookworm main\n")
    sources = build.host_sources("bookworm", (tmp_path,))
    text = sources.deb822
    assert "Suites: bookworm bookworm-updates" in text
    assert "Suites: bookworm-security" in text
    assert "nodesource" not in text and "mirror.example" not in text
    assert "trixie" not in text and "commented" not in text and "not.a.source" not in text
    assert "URIs: http://ftp.example/debian\nSuites: bookworm\nComponents: main contrib" in text
    assert "Signed-By: /k.gpg" in text
    assert text.count("Types: deb\n") == 3
    assert str(tmp_path / "debian.sources") in sources.origin


def test_no_source_for_the_suite_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "only-node.sources").write_text(DEBIAN_SOURCES.split("\n\n")[2])
    with pytest.raises(build.BuildError, match="--mirror"):
        build.host_sources("bookworm", (tmp_path,))


def test_a_mirror_replaces_the_host_sources() -> None:
    sources = build.mirror_sources("bookworm", "http://mirror.example/debian")
    assert "URIs: http://mirror.example/debian" in sources.deb822
    assert "Suites: bookworm bookworm-updates" in sources.deb822


def test_recipe_version_names_everything_that_goes_into_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = recipes.DEBIAN_12
    assert recipe.version == recipe.version and len(recipe.version) == 12
    assert recipe.build_name == f"debian-12-{recipe.version}"
    assert replace(recipe, packages=(*recipe.packages, "vim")).version != recipe.version
    before = recipe.version
    guest = tmp_path / "guest"
    shutil.copytree(recipes.GUEST_FILES, guest)
    monkeypatch.setattr(recipes, "GUEST_FILES", guest)
    assert recipe.version == before  # the same files: the same version
    (guest / "sshd-vpsd.conf").write_text("PermitRootLogin yes\n")
    assert recipe.version != before


def test_a_build_explains_what_it_needs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(build, "missing_programs", lambda: ["mmdebstrap"])
    with pytest.raises(build.BuildError, match="apt-get install mmdebstrap"):
        build.build(recipes.DEBIAN_12, tmp_path)
    monkeypatch.setattr(build, "missing_programs", list)
    monkeypatch.setattr(build.os, "geteuid", lambda: 1000)
    with pytest.raises(build.BuildError, match="needs root"):
        build.build(recipes.DEBIAN_12, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_cached_build_is_not_built_again(tmp_path: Path) -> None:
    version = recipes.DEBIAN_12.version
    write_fake_image(tmp_path, version=version)
    lines: list[str] = []
    built = build.build(recipes.DEBIAN_12, tmp_path, progress=lines.append)
    assert built.folder == tmp_path / f"debian-12-{version}"
    assert "already built" in lines[0]


def test_place_links_a_build_into_a_data_dir_once(tmp_path: Path) -> None:
    cache, images = tmp_path / "cache", tmp_path / "images"
    cached = store.read_build(write_fake_image(cache))
    placed = store.place(cached, images)
    assert placed.folder == images / cached.build_name
    assert (placed.folder / "disk.qcow2").stat().st_ino == (
        cached.folder / "disk.qcow2"
    ).stat().st_ino
    assert store.place(cached, images) == placed
    assert [p.name for p in images.iterdir()] == [cached.build_name]
    store.remove(images, cached.build_name)
    assert not (images / cached.build_name).exists()
    assert (cached.folder / "disk.qcow2").exists()


def test_an_incomplete_build_is_refused(tmp_path: Path) -> None:
    folder = write_fake_image(tmp_path)
    (folder / "initrd.img").unlink()
    with pytest.raises(DriverError, match=r"initrd\.img missing"):
        store.read_build(folder)
    assert store.find_build(tmp_path, "nothing-here") is None
