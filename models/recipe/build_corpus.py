"""Build the en->de parallel corpus for the embedded translation model from Debian packages.

Steps (each idempotent, under ``--work``, default ``build/corpus``):

1. ``apt-get download`` the source packages (needs ``apt-get update`` once; installs nothing);
2. ``dpkg-deb -x`` them;
3. extract aligned pairs:
   * LibreOffice help: every ``<p>``/``<h*>`` carries an id (``par_id...``, ``hd_id...``) that is
     the same in every language, so paragraphs align exactly.  Elements marked ``hidden`` are
     dropped, except the default variant of a ``switchinline`` (the text a non-macOS reader sees);
   * LibreOffice UI strings and Wesnoth campaigns: gettext ``.mo`` catalogues (msgid -> msgstr);
4. cut the held-out dev and test sets **by document** (help file), never at random, then drop
   from training every pair whose normalised English or German side equals a held-out one.

Outputs: ``train.tsv`` (doc, en, de), ``dev.tsv`` and ``test.tsv`` (doc, en, de), plus
``stats.json``.  The committed test/dev sets under ``eval/data`` are copies of the last two.

Run: ``python models/recipe/build_corpus.py`` (about one minute once the packages are local).
"""

from __future__ import annotations

import argparse
import gettext
import html
import json
import random
import re
import subprocess
import sys
import unicodedata
from html.parser import HTMLParser
from pathlib import Path

LO_PACKAGES = ["libreoffice-help-en-us", "libreoffice-help-de", "libreoffice-l10n-de"]
WESNOTH_CAMPAIGNS = [
    "did", "dm", "dw", "ei", "httt", "l", "low", "nr", "sof", "sota", "sotbe", "thot",
    "trow", "tsg", "ttb", "utbs",
]
WESNOTH_PACKAGES = [f"wesnoth-1.16-{c}" for c in WESNOTH_CAMPAIGNS]

ID_RE = re.compile(r"^(par_id|hd_id)")
BLOCK_TAGS = {"p", "h1", "h2", "h3", "h4", "h5", "h6"}


class _HelpParser(HTMLParser):
    """Collect the visible text of every id-carrying paragraph/heading of one help page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: dict[str, str] = {}
        self._stack: list[tuple[str, bool]] = []  # (tag, hidden)
        self._cur_id: str | None = None
        self._cur_depth = 0
        self._buf: list[str] = []

    def _hidden(self) -> bool:
        return any(h for _, h in self._stack)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        el_id = a.get("id") or ""
        hidden = "hidden" in a
        # switchinline: keep the default variant (id "default..."), drop MAC/WIN/app variants
        if hidden and el_id.startswith("default"):
            hidden = False
        if tag in ("br", "img", "meta", "link", "input"):
            return
        self._stack.append((tag, hidden))
        if self._cur_id is None and tag in BLOCK_TAGS and ID_RE.match(el_id) and not self._hidden():
            self._cur_id = el_id
            self._cur_depth = len(self._stack)
            self._buf = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("br", "img", "meta", "link", "input"):
            return
        # pop to the matching tag (the pages are well-formed; be lenient anyway)
        while self._stack:
            t, _ = self._stack.pop()
            if self._cur_id is not None and len(self._stack) < self._cur_depth:
                text = " ".join("".join(self._buf).split())
                if text:
                    self.out[self._cur_id] = text
                self._cur_id = None
            if t == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._cur_id is not None and not self._hidden():
            self._buf.append(data)


def parse_help_page(path: Path) -> dict[str, str]:
    p = _HelpParser()
    p.feed(path.read_text(encoding="utf-8", errors="replace"))
    return p.out


def run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True)


def fetch(work: Path, packages: list[str]) -> Path:
    debs = work / "debs"
    root = work / "root"
    debs.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if not list(debs.glob(f"{p}_*.deb"))]
    if missing:
        try:
            run(["apt-get", "download", *missing], debs)
        except (OSError, subprocess.CalledProcessError) as exc:
            sys.exit(f"apt-get download failed ({exc}); run 'apt-get update' first")
    stamp = root / ".extracted"
    if not stamp.exists():
        root.mkdir(parents=True, exist_ok=True)
        for deb in sorted(debs.glob("*.deb")):
            run(["dpkg-deb", "-x", str(deb.resolve()), str(root.resolve())], work)
        stamp.touch()
    return root


def clean(text: str) -> str:
    text = html.unescape(text).replace("\u00a0", " ")
    return " ".join(text.split())


def lo_help_pairs(root: Path) -> list[tuple[str, str, str]]:
    base = root / "usr/share/libreoffice/help"
    pairs = []
    for en_path in sorted((base / "en-US").rglob("*.html")):
        rel = en_path.relative_to(base / "en-US")
        de_path = base / "de" / rel
        if not de_path.exists():
            continue
        en, de = parse_help_page(en_path), parse_help_page(de_path)
        doc = "lohelp:" + str(rel.with_suffix(""))
        for key, en_text in en.items():
            de_text = de.get(key)
            if de_text:
                pairs.append((doc, clean(en_text), clean(de_text)))
    return pairs


def mo_pairs(paths: list[Path], prefix: str) -> list[tuple[str, str, str]]:
    pairs = []
    for mo in sorted(paths):
        with mo.open("rb") as fh:
            cat = gettext.GNUTranslations(fh)._catalog  # type: ignore[attr-defined]
        doc = f"{prefix}:{mo.stem}"
        for key, value in cat.items():
            if isinstance(key, tuple):  # plural: keep form 0
                if key[1] != 0:
                    continue
                key = key[0]
            if not key or not value:
                continue
            key = key.split("\x04", 1)[-1]  # strip msgctxt
            en, de = clean(key), clean(value)
            en = en.replace("~", "")  # LibreOffice mnemonic marks
            de = de.replace("~", "")
            if en and de:
                pairs.append((doc, en, de))
    return pairs


def norm(text: str) -> str:
    """Key for near-duplicate detection: case, digits, punctuation and spaces folded."""
    t = unicodedata.normalize("NFKC", text).lower()
    t = re.sub(r"\d+", "0", t)
    t = re.sub(r"[^\w]+", " ", t)
    return " ".join(t.split())


def usable(en: str, de: str, max_words: int = 80) -> bool:
    ne, nd = len(en.split()), len(de.split())
    if ne == 0 or nd == 0 or ne > max_words or nd > max_words:
        return False
    if en == de and ne > 2:  # untranslated
        return False
    ratio = (len(de) + 1) / (len(en) + 1)
    return 0.4 <= ratio <= 2.5


def split_by_document(
    pairs: list[tuple[str, str, str]], seed: int, n_test: int, n_dev: int
) -> tuple[list, list, list]:
    """Held-out sets are whole LibreOffice help files; eligible sentences have 6-40 words."""
    rng = random.Random(seed)
    docs = sorted({d for d, _, _ in pairs if d.startswith("lohelp:")})
    rng.shuffle(docs)
    by_doc: dict[str, list] = {}
    for p in pairs:
        by_doc.setdefault(p[0], []).append(p)

    def eligible(p: tuple[str, str, str]) -> bool:
        return 6 <= len(p[1].split()) <= 40

    held: dict[str, list] = {"test": [], "dev": []}
    seen: set[str] = set()
    targets = [("test", n_test), ("dev", n_dev)]
    it = iter(docs)
    held_docs: set[str] = set()
    for name, n in targets:
        while len(held[name]) < n:
            doc = next(it)
            held_docs.add(doc)
            for p in by_doc[doc]:
                k = norm(p[1])
                if eligible(p) and k not in seen:
                    seen.add(k)
                    held[name].append(p)
    held_keys = {norm(p[1]) for v in held.values() for p in v} | {
        norm(p[2]) for v in held.values() for p in v
    }
    train, dropped = [], 0
    seen_train: set[tuple[str, str]] = set()
    for p in pairs:
        if p[0] in held_docs:
            continue
        if norm(p[1]) in held_keys or norm(p[2]) in held_keys:
            dropped += 1
            continue
        key = (p[1], p[2])
        if key in seen_train:
            continue
        seen_train.add(key)
        train.append(p)
    print(f"held-out docs: {len(held_docs)}; near-duplicates dropped from train: {dropped}")
    return train, held["dev"], held["test"]


def write_tsv(path: Path, rows: list[tuple[str, str, str]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for doc, en, de in rows:
            fh.write(f"{doc}\t{en}\t{de}\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("build/corpus"))
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--n-test", type=int, default=1200)
    ap.add_argument("--n-dev", type=int, default=600)
    ap.add_argument("--no-wesnoth", action="store_true", help="LibreOffice sources only")
    args = ap.parse_args(argv)

    packages = LO_PACKAGES + ([] if args.no_wesnoth else WESNOTH_PACKAGES)
    root = fetch(args.work, packages)
    help_pairs = lo_help_pairs(root)
    ui_pairs = mo_pairs(list((root / "usr/lib/libreoffice/program/resource/de").rglob("*.mo")), "loui")
    wes_pairs = [] if args.no_wesnoth else mo_pairs(
        [p for p in root.rglob("*.mo") if "/de/" in str(p) and "wesnoth" in str(p)], "wesnoth"
    )
    stats = {"lohelp_raw": len(help_pairs), "loui_raw": len(ui_pairs), "wesnoth_raw": len(wes_pairs)}
    pairs = [p for p in help_pairs + ui_pairs + wes_pairs if usable(p[1], p[2])]
    train, dev, test = split_by_document(pairs, args.seed, args.n_test, args.n_dev)
    out = args.work
    write_tsv(out / "train.tsv", train)
    write_tsv(out / "dev.tsv", dev)
    write_tsv(out / "test.tsv", test)
    src_count: dict[str, int] = {}
    for d, _, _ in train:
        src_count[d.split(":")[0]] = src_count.get(d.split(":")[0], 0) + 1
    stats.update(
        usable=len(pairs), train=len(train), dev=len(dev), test=len(test), train_by_source=src_count,
        seed=args.seed,
    )
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
