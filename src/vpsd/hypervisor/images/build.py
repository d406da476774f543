"""Building a guest image from Debian's packages with mmdebstrap (no other download).

The build runs in a temporary folder next to its destination and is renamed into place
only when complete, so an interrupted build never leaves a half-made image under a name
that servers could boot from. Output, in ``<cache>/<slug>-<version>/``:

- ``disk.qcow2``: the root filesystem (ext4 on the whole disk, no partition table),
  zstd-compressed qcow2; servers' disks are copy-on-write overlays on it;
- ``vmlinuz`` and ``initrd.img``: for direct kernel boot;
- ``manifest.json``: what ``vpsd.hypervisor.images.store`` reads back.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from vpsd.core import commands
from vpsd.hypervisor.base import DriverError
from vpsd.hypervisor.images.recipes import GUEST_FILES, Recipe
from vpsd.hypervisor.images.store import MANIFEST, BuiltImage, read_build

GIB = 1024**3
MIB = 1024**2
BUILD_TIMEOUT = 30 * 60.0
STEP_TIMEOUT = 10 * 60.0
SOURCES_DIRS = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
REQUIRED_PROGRAMS = {
    "mmdebstrap": "mmdebstrap",
    "mkfs.ext4": "e2fsprogs",
    "qemu-img": "qemu-utils",
}
# Documentation and translations: a quarter of the tree, of no use on a server.
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
)
# initramfs with only what booting from a virtio disk needs: a small initrd unpacks in a
# fraction of the time under software emulation.
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "virtio_console")

Progress = Callable[[str], None]


class BuildError(DriverError):
    """The image could not be built; the message says why and what to install or fix."""


@dataclass(frozen=True, slots=True)
class Sources:
    """The apt sources the build uses, in deb822 form, and where they came from."""

    deb822: str
    origin: str


def missing_programs() -> list[str]:
    """Debian packages to install before a build can run (empty when all are there)."""
    return sorted({pkg for prog, pkg in REQUIRED_PROGRAMS.items() if not shutil.which(prog)})


def host_sources(suite: str, roots: tuple[Path, ...] = SOURCES_DIRS) -> Sources:
    """This machine's apt sources for ``suite`` (and its -updates/-security), as deb822.

    Reads ``/etc/apt/sources.list`` and ``sources.list.d/*.list|*.sources``; other
    repositories (third-party ones) are left out. Raises ``BuildError`` when none serves
    the suite.
    """
    stanzas: list[str] = []
    origins: list[str] = []
    for path in _source_files(roots):
        text = path.read_text(errors="replace")
        found = (
            _deb822_stanzas(text, suite) if path.suffix == ".sources" else _one_line(text, suite)
        )
        if found:
            stanzas += found
            origins.append(str(path))
    if not stanzas:
        raise BuildError(
            f"no apt source on this machine serves Debian {suite!r} (looked in "
            f"{', '.join(str(r) for r in roots)}); add one, or pass --mirror URL"
        )
    return Sources("\n\n".join(stanzas) + "\n", ", ".join(origins))


def mirror_sources(suite: str, mirror: str) -> Sources:
    """Sources for ``suite`` from one mirror URL (``--mirror``), without security updates."""
    stanza = f"Types: deb\nURIs: {mirror}\nSuites: {suite} {suite}-updates\nComponents: main"
    return Sources(stanza + "\n", mirror)


def _source_files(roots: tuple[Path, ...]) -> list[Path]:
    files: list[Path] = []
    for root in roots:
        if root.is_file():
            files.append(root)
        elif root.is_dir():
            files += sorted(p for p in root.iterdir() if p.suffix in (".list", ".sources"))
    return files


def _wanted(suite_name: str, suite: str) -> bool:
    return suite_name == suite or suite_name.startswith(f"{suite}-")


def _deb822_fields(block: str) -> list[tuple[str, str]]:
    """``(key, value)`` pairs of one deb822 stanza; continuation lines stay in the value."""
    fields: list[tuple[str, str]] = []
    for line in block.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith((" ", "\t")) and fields:
            key, value = fields[-1]
            fields[-1] = (key, f"{value}\n{line}")
        else:
            key, _, value = line.partition(":")
            fields.append((key.strip(), value.strip()))
    return fields


def _deb822_stanzas(text: str, suite: str) -> list[str]:
    stanzas = []
    for block in text.split("\n\n"):
        fields = _deb822_fields(block)
        by_key = {key.lower(): value for key, value in fields}
        types = by_key.get("types", "").split()
        if by_key.get("enabled", "yes").lower() == "no" or "deb" not in types:
            continue
        suites = [s for s in by_key.get("suites", "").split() if _wanted(s, suite)]
        if not suites or not by_key.get("uris"):
            continue
        kept = [f"{k}: {v}" for k, v in fields if k.lower() not in ("types", "suites")]
        stanzas.append("\n".join(["Types: deb", f"Suites: {' '.join(suites)}", *kept]))
    return stanzas


def _one_line(text: str, suite: str) -> list[str]:
    stanzas = []
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if len(words) < 4 or words[0] != "deb":
            continue
        options = ""
        if words[1].startswith("["):
            end = next(i for i, w in enumerate(words) if w.endswith("]"))
            options, words = " ".join(words[1 : end + 1]), [words[0], *words[end + 1 :]]
        uri, suite_name, *components = words[1:]
        if not _wanted(suite_name, suite):
            continue
        signed = [o for o in options.strip("[]").split() if o.startswith("signed-by=")]
        lines = [f"Types: deb\nURIs: {uri}\nSuites: {suite_name}"]
        lines.append(f"Components: {' '.join(components)}")
        lines += [f"Signed-By: {o.split('=', 1)[1]}" for o in signed]
        stanzas.append("\n".join(lines))
    return stanzas


def build(
    recipe: Recipe,
    cache_dir: Path,
    *,
    sources: Sources | None = None,
    progress: Progress = lambda _: None,
) -> BuiltImage:
    """Build ``recipe`` into ``cache_dir/<slug>-<version>/`` unless it is already there.

    Needs root (mmdebstrap installs packages into a tree owned by root) and the programs
    of ``REQUIRED_PROGRAMS``. ``progress`` receives one line per step and per line of
    mmdebstrap's output. Raises ``BuildError`` with the reason.
    """
    destination = cache_dir / recipe.build_name
    if (destination / MANIFEST).exists():
        progress(f"{recipe.build_name} is already built in {cache_dir}")
        return read_build(destination)
    if missing := missing_programs():
        raise BuildError(
            f"building an image needs the Debian packages {', '.join(missing)}: "
            f"apt-get install {' '.join(missing)}"
        )
    if os.geteuid() != 0:
        raise BuildError("building an image needs root (mmdebstrap installs packages as root)")
    sources = sources or host_sources(recipe.suite)
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{recipe.build_name}.", dir=cache_dir))
    try:
        output = work / "out"
        output.mkdir()
        tree = work / "root"
        _bootstrap(recipe, sources, work, tree, progress)
        _extract_boot_files(tree, output)
        _make_disk(recipe, tree, work, output, progress)
        _write_manifest(recipe, tree, output, sources)
        for path in output.iterdir():
            path.chmod(0o444)  # immutable: servers' disks are backed by these files
        output.rename(destination)
        progress(f"built {recipe.build_name} in {destination}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return read_build(destination)


def _bootstrap(
    recipe: Recipe, sources: Sources, work: Path, tree: Path, progress: Progress
) -> None:
    progress(f"installing Debian {recipe.suite} packages with mmdebstrap (from {sources.origin})")
    sources_file = work / "sources.sources"
    sources_file.write_text(sources.deb822)
    initramfs = work / "initramfs-modules"
    initramfs.write_text("\n".join(INITRAMFS_MODULES) + "\n")
    args = [
        "mmdebstrap",
        "--variant=minbase",
        "--mode=root",
        "--format=directory",
        f"--include={','.join(recipe.packages)}",
        *(f"--dpkgopt={option}" for option in DPKG_EXCLUDES),
        # Before the kernel's package runs update-initramfs: a small, targeted initrd.
        '--essential-hook=mkdir -p "$1/etc/initramfs-tools/conf.d" '
        '"$1/usr/share/initramfs-tools/modules.d"',
        '--essential-hook=echo MODULES=list > "$1/etc/initramfs-tools/conf.d/vpsd"',
        f"--essential-hook=copy-in {initramfs} /usr/share/initramfs-tools/modules.d/",
        f'--customize-hook=sh {GUEST_FILES / "customize.sh"} "$1"',
        recipe.suite,
        str(tree),
        str(sources_file),
    ]
    commands.run_streaming(args, timeout=BUILD_TIMEOUT, on_line=progress, cwd=work)


def _extract_boot_files(tree: Path, output: Path) -> None:
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    initrds = sorted((tree / "boot").glob("initrd.img-*"))
    if len(kernels) != 1 or len(initrds) != 1:
        raise BuildError(f"expected one kernel and one initrd in /boot, found {kernels} {initrds}")
    shutil.copyfile(kernels[0], output / "vmlinuz")
    shutil.copyfile(initrds[0], output / "initrd.img")


def _make_disk(recipe: Recipe, tree: Path, work: Path, output: Path, progress: Progress) -> None:
    raw = work / "disk.raw"
    progress(f"making a {recipe.min_disk_gb} GiB ext4 root filesystem from the tree")
    commands.run(
        ["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(tree), str(raw),
         f"{recipe.min_disk_gb}G"],
        timeout=STEP_TIMEOUT,
    )  # fmt: skip
    progress("compressing it into a qcow2 image (zstd)")
    commands.run(
        ["qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2",
         "-o", "compression_type=zstd", str(raw), str(output / "disk.qcow2")],
        timeout=STEP_TIMEOUT,
    )  # fmt: skip


def _write_manifest(recipe: Recipe, tree: Path, output: Path, sources: Sources) -> None:
    data_bytes = _tree_bytes(tree)
    kernel = sorted((tree / "boot").glob("vmlinuz-*"))[0].name.removeprefix("vmlinuz-")
    manifest = {
        "slug": recipe.slug,
        "version": recipe.version,
        "name": recipe.name,
        "os": recipe.os,
        "min_disk_gb": recipe.min_disk_gb,
        "min_memory_mb": recipe.min_memory_mb,
        "size_mb": -(-data_bytes // MIB),
        "cmdline": recipe.cmdline,
        "kernel": kernel,
        "built_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sources": sources.origin,
    }
    (output / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _tree_bytes(tree: Path) -> int:
    total = 0
    for folder, _, files in os.walk(tree):
        for name in files:
            path = Path(folder) / name
            if not path.is_symlink():
                total += path.stat().st_size
    return total
