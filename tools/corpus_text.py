#!/usr/bin/env python3
"""English text from Debian packages for fathom's depth study (scripts/depth_corpus.sh).

Reads the packages' files (unpacked .deb folders, one per package), turns each kind of file into
plain text documents (HTML pages, reStructuredText sources, Info manuals, POD, dictd databases,
WordNet glosses, SWORD Bible modules), removes boilerplate and duplicates, and writes
  OUT/train.txt, OUT/val.txt  documents separated by a line holding only the ASCII record
                              separator (0x1E), which `fathom-prepare --split-records` reads as a
                              document end
  OUT/manifest.json           each package with its licence, bytes and documents kept, and the
                              totals of each split

Deduplication: exact duplicates of a document (after collapsing whitespace and case) are dropped;
a paragraph of at least 64 characters that was already seen anywhere is dropped (this also takes
out the navigation, headers and footers that documentation pages repeat); a short line seen in
more than 40 documents is dropped as boilerplate. Validation documents are chosen by a hash of
their text (stable whatever order the files are read in), and because paragraphs are deduplicated
over both splits together, no paragraph of 64 characters or more is in both.

Standard library only. Usage:
  corpus_text.py --packages DIR --out DIR [--val-permille 10] [--only pkg,pkg] [--max-mb N]
  corpus_text.py --check OUT          checks a written corpus (sizes, no train/val overlap)
  corpus_text.py --list               prints the packages with their licences, one a line
"""
import argparse
import bz2
import collections
import glob
import gzip
import hashlib
import html.parser
import json
import lzma
import os
import re
import struct
import sys
import zlib

SEPARATOR = "\x1e"
MIN_PARAGRAPH = 64      # shorter paragraphs are never deduplicated (headings, short code lines)
BOILERPLATE_DOCS = 40   # a short line in more documents than this is boilerplate
CHUNK_BYTES = 32_000    # single-file sources (dictionaries, Bibles) become documents of this size

# Each package: the files to read (globs under the unpacked package root), how to read them, and
# the licence of the text (from the package's copyright file; the main text's licence first).
PACKAGES = [
    ("dict-gcide", "GPL-3+ (GCIDE, from Webster's 1913 and WordNet)",
     [("usr/share/dictd/gcide.dict.dz", "dictd")]),
    ("wordnet-base", "WordNet 3.0 licence (permissive)",
     [("usr/share/wordnet/data.*", "wordnet")]),
    ("sword-text-web", "public domain (World English Bible)",
     [("usr/share/sword/modules/texts/ztext/*", "sword")]),
    ("sword-text-kjv", "public domain (King James Version)",
     [("usr/share/sword/modules/texts/ztext/*", "sword")]),
    ("sword-comm-tdavid", "public domain (Spurgeon, The Treasury of David)",
     [("usr/share/sword/modules/comments/zcom/*", "sword")]),
    ("sword-comm-mhcc", "public domain (Matthew Henry's Concise Commentary)",
     [("usr/share/sword/modules/comments/zcom/*", "sword")]),
    ("sword-comm-scofield", "public domain (Scofield Reference Notes, 1917)",
     [("usr/share/sword/modules/comments/zcom/*", "sword")]),
    ("jargon-text", "public domain (The Jargon File)",
     [("usr/share/doc/jargon-text/jargon.txt.gz", "text")]),
    ("dict-foldoc", "GFDL-1.1+ (Free On-line Dictionary of Computing)",
     [("usr/share/dictd/foldoc.dict.dz", "dictd")]),
    ("dict-devil", "public domain (Bierce, The Devil's Dictionary)",
     [("usr/share/dictd/devil.dict.dz", "dictd")]),
    ("fortunes", "public domain / BSD (fortune cookie files)",
     [("usr/share/games/fortunes/*", "fortune")]),
    ("abs-guide", "public domain (Advanced Bash-Scripting Guide)",
     [("usr/share/doc/abs-guide/html/*.html", "html")]),
    ("gnu-standards", "GFDL-1.3+ (GNU Coding Standards)",
     [("usr/share/doc/gnu-standards/*.text.gz", "text")]),
    ("debian-reference-en", "GPL-2+ (Debian Reference)",
     [("usr/share/debian-reference/*.en.html", "html")]),
    ("python3.11-doc", "PSF-2.0 (Python documentation)",
     [("usr/share/doc/python3.11/html/_sources/**/*.txt", "text")]),
    ("linux-doc-6.1", "GPL-2 (Linux kernel documentation)",
     [("usr/share/doc/linux-doc-6.1/html/_sources/**/*.txt", "text")]),
    ("perl-doc", "GPL-1+ or Artistic (Perl documentation)",
     [("usr/share/perl/*/pod/*.pod", "pod")]),
    ("postgresql-doc-15", "PostgreSQL licence (PostgreSQL documentation)",
     [("usr/share/doc/postgresql-doc-15/html/*.html", "html")]),
    ("vim-doc", "Vim licence (Vim manual)",
     [("usr/share/doc/vim/html/*.html", "html")]),
    ("maxima-doc", "GPL-2+ (Maxima manual)",
     [("usr/share/doc/maxima-doc/html/*.html", "html")]),
    ("octave-doc", "GPL-3+ (GNU Octave manual)",
     [("usr/share/doc/octave/**/*.html", "html")]),
    ("libreoffice-help-en-us", "MPL-2.0 (LibreOffice help)",
     [("usr/share/libreoffice/help/en-US/**/*.html", "html")]),
    ("qtbase5-doc-html", "GFDL-1.3 (Qt 5 documentation)",
     [("usr/share/qt5/doc/**/*.html", "html")]),
    ("rust-doc", "MIT or Apache-2.0 (Rust books and standard library documentation)",
     [("usr/share/doc/rust-doc/html/**/*.html", "html")]),
    ("openjdk-17-doc", "GPL-2 with Classpath exception (Java SE 17 API documentation)",
     [("usr/share/doc/openjdk-17-doc/**/*.html", "html")]),
]


# ---- readers: path -> iterable of document texts ------------------------------------------------

def read_bytes(path):
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith((".gz", ".dz")):
        data = gzip.decompress(data)
    return data


def decode(data):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def chunks(text, size=CHUNK_BYTES, by=r"\n\s*\n", join="\n\n"):
    """Splits a long text at paragraph ends (or at `by`) into documents of about `size`
    characters."""
    doc, n = [], 0
    for para in re.split(by, text):
        doc.append(para)
        n += len(para) + len(join)
        if n >= size:
            yield join.join(doc)
            doc, n = [], 0
    if doc:
        yield join.join(doc)


class HtmlText(html.parser.HTMLParser):
    SKIP = {"script", "style", "head", "nav", "header", "footer", "noscript", "svg", "button",
            "form", "select", "title", "iframe"}
    BLOCK = {"p", "div", "br", "li", "ul", "ol", "dl", "dt", "dd", "tr", "table", "section",
             "article", "pre", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "td",
             "th", "summary", "details", "figure", "figcaption", "main", "body"}
    VOID = {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source",
            "track", "wbr", "param"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out, self.skip, self.pre = [], 0, 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP and tag not in self.VOID:
            self.skip += 1
        if tag == "pre":
            self.pre += 1
        if tag in self.BLOCK:
            self.out.append("\n\n" if tag in ("p", "pre", "h1", "h2", "h3", "h4", "div") else "\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP and self.skip:
            self.skip -= 1
        if tag == "pre" and self.pre:
            self.pre -= 1
        if tag in self.BLOCK:
            self.out.append("\n")

    def handle_data(self, data):
        if self.skip:
            return
        if not self.pre:
            data = re.sub(r"\s+", " ", data)
        self.out.append(data)

    def text(self):
        t = "".join(self.out)
        t = re.sub(r"[ \t]+\n", "\n", t)
        return re.sub(r"\n{3,}", "\n\n", t).strip()


def read_html(path):
    p = HtmlText()
    try:
        p.feed(decode(read_bytes(path)))
        p.close()
    except Exception:  # a malformed page is skipped, not fatal
        return []
    return [p.text()]


def read_text(path):
    return [decode(read_bytes(path))]


def read_pod(path):
    out = []
    for line in decode(read_bytes(path)).splitlines():
        if line.startswith("=") and not line.startswith(("=head", "=item")):
            continue  # =pod, =over, =back, =cut, =begin ...
        line = re.sub(r"^=head\d\s*|^=item\s*", "", line)
        line = re.sub(r"[A-Z]<<+\s*(.*?)\s*>>+", r"\1", line)
        line = re.sub(r"[A-Z]<([^<>]*)>", r"\1", line)
        out.append(line)
    return ["\n".join(out)]


def read_info(path):
    text = decode(read_bytes(path))
    # Info nodes start after a 0x1F line; drop the node header lines ("File: ..., Node: ...").
    docs = []
    for node in text.split("\x1f"):
        lines = node.strip("\n").splitlines()
        if lines and lines[0].startswith("File:"):
            lines = lines[1:]
        body = "\n".join(lines).strip()
        if body and not body.startswith(("Tag Table:", "Indirect:", "Local Variables:")):
            docs.append(body)
    return list(chunks("\n\n".join(docs)))


def read_dictd(path):
    text = decode(read_bytes(path))
    text = re.sub(r"^00-database-[^\n]*\n(?:[ \t][^\n]*\n|\n)*", "", text, flags=re.M)
    return list(chunks(text))


def read_wordnet(path):
    if os.path.basename(path) not in ("data.noun", "data.verb", "data.adj", "data.adv"):
        return []
    lines = []
    for line in decode(read_bytes(path)).splitlines():
        if line.startswith(" ") or "|" not in line:
            continue  # licence header
        head, gloss = line.split("|", 1)
        fields = head.split()
        n = int(fields[3], 16)
        words = [fields[4 + 2 * i].replace("_", " ") for i in range(n)]
        lines.append(", ".join(words) + ": " + gloss.strip())
    return list(chunks("\n".join(lines), by="\n", join="\n"))


SWORD_MARKUP = re.compile(r"<[^>]*>")


def read_sword(path):
    """A SWORD zText/zCom module folder: blocks listed in *.?zs (offset, size, ucsize), each
    compressed (zlib by default, or bzip2/xz); the decompressed text is OSIS/ThML/GBF markup."""
    if not os.path.isdir(path):
        return []
    docs = []
    for index in sorted(glob.glob(os.path.join(path, "*.?zs"))):
        data_file = index[:-1] + "z"
        with open(index, "rb") as f:
            entries = f.read()
        with open(data_file, "rb") as f:
            blob = f.read()
        parts = []
        for i in range(0, len(entries) - 11, 12):
            off, size, _ = struct.unpack("<III", entries[i:i + 12])
            raw = blob[off:off + size]
            for fn in (zlib.decompress, bz2.decompress, lzma.decompress):
                try:
                    parts.append(decode(fn(raw)))
                    break
                except Exception:
                    continue
        text = "".join(parts)
        text = re.sub(r"<(?:/?p|br\s*/?|/?div[^>]*|lb\s*/?|/?l\b[^>]*)>", "\n", text)
        text = SWORD_MARKUP.sub("", text)
        text = html.unescape(text)
        # Blocks concatenate verses without separators: one verse (or comment) per line.
        text = re.sub(r"[ \t]+", " ", text)
        text = re.sub(r"\n\s*\n+", "\n\n", text)
        docs.extend(chunks(text))
    return docs


def read_fortune(path):
    if os.path.basename(path).endswith((".dat", ".u8")) or os.path.islink(path):
        return []
    text = decode(read_bytes(path))
    return list(chunks("\n\n".join(t.strip() for t in text.split("\n%\n"))))


READERS = {"html": read_html, "text": read_text, "pod": read_pod, "info": read_info,
           "dictd": read_dictd, "wordnet": read_wordnet, "sword": read_sword,
           "fortune": read_fortune}


# ---- cleaning and deduplication -------------------------------------------------------------------

def normalise(text):
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace(SEPARATOR, " ")
    text = "".join(c for c in text if c in "\n\t" or ord(c) >= 32 or c == "\f")
    text = text.replace("\f", "\n")
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def key(text):
    return hashlib.blake2b(re.sub(r"\s+", " ", text.lower()).strip().encode(), digest_size=12).digest()


def is_val(text, permille):
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:4], "little") % 1000 < permille


def paragraphs(text):
    return re.split(r"\n\s*\n", text)


def build(args):
    only = set(args.only.split(",")) if args.only else None
    docs = []  # (package, text)
    manifest = {"packages": [], "separator": "0x1E line", "min_paragraph": MIN_PARAGRAPH}
    skipped = []
    for name, licence, sources in PACKAGES:
        if only and name not in only:
            continue
        root = os.path.join(args.packages, name)
        if not os.path.isdir(root):
            skipped.append(name)
            continue
        files = []
        for pattern, kind in sources:
            for p in sorted(glob.glob(os.path.join(root, pattern), recursive=True)):
                if os.path.isfile(p) or kind == "sword":
                    files.append((p, kind))
        raw = 0
        n0 = len(docs)
        for p, kind in files:
            for text in READERS[kind](p):
                text = normalise(text)
                if len(text) >= 200:
                    docs.append((name, text))
                    raw += len(text)
        manifest["packages"].append({"package": name, "licence": licence, "files": len(files),
                                     "documents_read": len(docs) - n0, "chars_read": raw})
        print(f"corpus_text: {name}: {len(files)} files, {len(docs) - n0} documents, "
              f"{raw / 1e6:.1f} M characters", file=sys.stderr)

    if skipped:
        print(f"corpus_text: {len(skipped)} packages not unpacked in {args.packages}, skipped: "
              f"{', '.join(skipped)}", file=sys.stderr)
    if not docs:
        print("corpus_text: no documents read; expected unpacked packages in --packages",
              file=sys.stderr)
        return 1

    # Document-level exact duplicates.
    seen, unique = set(), []
    for name, text in docs:
        k = key(text)
        if k not in seen:
            seen.add(k)
            unique.append((name, text))
    dropped_docs = len(docs) - len(unique)

    # Short lines repeated across many documents: navigation and page furniture.
    line_docs = collections.Counter()
    for _, text in unique:
        line_docs.update({l.strip() for l in text.splitlines() if 0 < len(l.strip()) < 80})
    boiler = {l for l, n in line_docs.items() if n > BOILERPLATE_DOCS and len(l) > 3}

    # Paragraph-level exact duplicates (over both splits: a paragraph lands in one split only).
    seen_para = set()
    per_package = collections.defaultdict(lambda: {"documents": 0, "chars": 0})
    out = {"train": [], "val": []}
    for name, text in unique:
        kept = []
        for para in paragraphs(text):
            lines = [l for l in para.splitlines() if l.strip() not in boiler]
            para = "\n".join(lines).strip("\n")
            if not para.strip():
                continue
            if len(para) >= MIN_PARAGRAPH:
                k = key(para)
                if k in seen_para:
                    continue
                seen_para.add(k)
            kept.append(para)
        text = "\n\n".join(kept).strip()
        if len(text) < 200:
            continue
        split = "val" if is_val(text, args.val_permille) else "train"
        out[split].append(text)
        per_package[name]["documents"] += 1
        per_package[name]["chars"] += len(text)

    os.makedirs(args.out, exist_ok=True)
    totals = {}
    for split, texts in out.items():
        path = os.path.join(args.out, f"{split}.txt")
        with open(path, "w", encoding="utf-8") as f:
            for t in texts:
                f.write(t)
                f.write("\n" + SEPARATOR + "\n")
        totals[split] = {"documents": len(texts), "bytes": os.path.getsize(path)}
    for p in manifest["packages"]:
        p.update({"documents_kept": per_package[p["package"]]["documents"],
                  "chars_kept": per_package[p["package"]]["chars"]})
    manifest.update({"duplicate_documents_dropped": dropped_docs,
                     "boilerplate_lines": len(boiler), "val_permille": args.val_permille,
                     "splits": totals})
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    print(f"corpus_text: train {totals['train']['documents']} documents, "
          f"{totals['train']['bytes'] / 1e6:.1f} MB; val {totals['val']['documents']} documents, "
          f"{totals['val']['bytes'] / 1e6:.1f} MB; {dropped_docs} duplicate documents dropped")
    return 0


def read_split(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    docs = text.split("\n" + SEPARATOR + "\n")
    if docs and not docs[-1].strip():
        docs.pop()
    return docs


def check(args):
    """Sizes and overlap: both splits non-empty, every document ended by a separator, no document
    and no paragraph of MIN_PARAGRAPH characters or more in both splits."""
    problems = []
    splits = {}
    for split in ("train", "val"):
        path = os.path.join(args.check, f"{split}.txt")
        if not os.path.isfile(path):
            print(f"corpus_text: check: '{path}' is missing", file=sys.stderr)
            return 1
        splits[split] = read_split(path)
        if not splits[split]:
            problems.append(f"{split}.txt holds no documents")
    train_docs = {key(d) for d in splits["train"]}
    train_paras = {key(p) for d in splits["train"] for p in paragraphs(d) if len(p) >= MIN_PARAGRAPH}
    doc_overlap = sum(key(d) in train_docs for d in splits["val"])
    para_overlap = sum(key(p) in train_paras for d in splits["val"] for p in paragraphs(d)
                       if len(p) >= MIN_PARAGRAPH)
    if doc_overlap:
        problems.append(f"{doc_overlap} validation documents are also in train")
    if para_overlap:
        problems.append(f"{para_overlap} validation paragraphs are also in train")
    manifest = os.path.join(args.check, "manifest.json")
    if os.path.isfile(manifest):
        with open(manifest) as f:
            m = json.load(f)
        for split in ("train", "val"):
            want = m["splits"][split]["documents"]
            if want != len(splits[split]):
                problems.append(f"{split}: manifest says {want} documents, the file holds "
                                f"{len(splits[split])}")
    for p in problems:
        print(f"corpus_text: check: {p}", file=sys.stderr)
    if not problems:
        print(f"corpus_text: check: ok: train {len(splits['train'])} documents, val "
              f"{len(splits['val'])} documents, no shared document or paragraph")
    return 1 if problems else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--packages", help="folder holding one unpacked folder per package")
    ap.add_argument("--out", help="output folder (train.txt, val.txt, manifest.json)")
    ap.add_argument("--val-permille", type=int, default=10,
                    help="documents per thousand held out for validation (default 10)")
    ap.add_argument("--only", help="comma list of packages to read (default: all)")
    ap.add_argument("--check", metavar="DIR", help="check a written corpus instead of building one")
    ap.add_argument("--list", action="store_true", help="print the packages and licences")
    args = ap.parse_args()
    if args.list:
        for name, licence, _ in PACKAGES:
            print(f"{name}\t{licence}")
        return 0
    if args.check:
        return check(args)
    if not args.packages or not args.out:
        ap.error("expected --packages DIR and --out DIR (or --check DIR, or --list)")
    if not 0 < args.val_permille < 1000:
        ap.error(f"--val-permille: expected 1..999, got {args.val_permille}")
    return build(args)


if __name__ == "__main__":
    sys.exit(main())
