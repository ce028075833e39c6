#!/usr/bin/env python3
# Test of tools/corpus_text.py and scripts/depth_corpus.sh on a small input: a few fake unpacked
# Debian packages (a fortune file, Sphinx text sources, an HTML page with navigation and a script,
# a dictd database, WordNet data) with planted duplicates. Checks the sizes the manifest reports,
# that duplicates and page furniture are gone, that no document or paragraph is in both splits,
# and that --check catches a planted overlap. With FATHOM_PREPARE (a fathom-prepare built with
# sentencepiece) it also runs `depth_corpus.sh bundle` and `shards` on the same packages: the
# bundle holds what the GPU machine needs, and the shards made from it have the bundle's tokens.
# Usage: test_corpus_text.py REPO WORK_DIR [BUILD_DIR_WITH_SENTENCEPIECE_FATHOM_PREPARE]

import gzip
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

repo, work = Path(sys.argv[1]), Path(sys.argv[2])
build = Path(sys.argv[3]) if len(sys.argv) > 3 else None
tool = repo / "tools" / "corpus_text.py"
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print(f"FAILED: {what}", file=sys.stderr)


def run(*args, ok=True):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if ok and r.returncode != 0:
        print(r.stdout, r.stderr, file=sys.stderr)
        raise SystemExit(f"FAILED: {' '.join(map(str, args))} exited {r.returncode}")
    return r


rng = random.Random(7)
WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at "
         "which but have an they you were her she there been one all we their has would when if "
         "so no will more about out up them into do can some time could these two may then first "
         "river mountain lantern harbour copper violin meadow thunder orchard whisper crystal").split()


def sentence():
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))).capitalize() + "."


def paragraph():
    return " ".join(sentence() for _ in range(rng.randint(3, 6)))


def write(path, text, gz=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode()
    path.write_bytes(gzip.compress(data) if gz else data)


shutil.rmtree(work, ignore_errors=True)
pk = work / "packages"
# Sphinx sources: 40 documents, one of them twice (a duplicate document), and a paragraph shared
# by two different documents (a duplicate paragraph).
shared = paragraph()
docs = ["\n\n".join(paragraph() for _ in range(4)) for _ in range(40)]
docs[5] = docs[5] + "\n\n" + shared
docs[9] = docs[9] + "\n\n" + shared
for i, d in enumerate(docs):
    write(pk / "python3.11-doc/usr/share/doc/python3.11/html/_sources" / f"page{i:02d}.rst.txt", d)
write(pk / "python3.11-doc/usr/share/doc/python3.11/html/_sources/copy/page03.rst.txt", docs[3])
# HTML pages: navigation, a script and a repeated footer line around the text.
for i in range(45):
    body = "".join(f"<p>{paragraph()}</p>" for _ in range(3))
    write(pk / "abs-guide/usr/share/doc/abs-guide/html" / f"p{i}.html",
          "<html><head><title>t</title><script>var secret = 1;</script></head><body>"
          "<nav>Home | Next | Previous</nav>" + body +
          "<div>Copyright the Advanced Bash-Scripting Guide authors</div></body></html>")
# A dictd database (gzip, as .dz is) and a fortune file.
write(pk / "dict-devil/usr/share/dictd/devil.dict.dz",
      "00-database-short\n   The Devil's Dictionary\n\n" +
      "\n\n".join(f"WORD{i}\n   {paragraph()}" for i in range(60)), gz=True)
write(pk / "fortunes/usr/share/games/fortunes/wisdom", "\n%\n".join(paragraph() for _ in range(80)))
# WordNet: one synset line (offset lex_filenum ss_type w_cnt word lex_id ... | gloss).
write(pk / "wordnet-base/usr/share/wordnet/data.noun",
      "  1 licence header line\n" +
      "\n".join(f"{i:08d} 03 n 02 lantern_{i} 0 lamp 0 000 | {sentence()}" for i in range(300)))

out = work / "text"
r = run(sys.executable, tool, "--packages", pk, "--out", out, "--val-permille", "200")
manifest = json.loads((out / "manifest.json").read_text())
for split in ("train", "val"):
    size = (out / f"{split}.txt").stat().st_size
    check(size == manifest["splits"][split]["bytes"], f"{split}: manifest bytes match the file")
    check(manifest["splits"][split]["documents"] > 0, f"{split}: documents in the split")
check(manifest["duplicate_documents_dropped"] == 1, "the duplicated document is dropped once "
      f"(got {manifest['duplicate_documents_dropped']})")
names = {p["package"] for p in manifest["packages"]}
check({"python3.11-doc", "abs-guide", "dict-devil", "fortunes", "wordnet-base"} <= names,
      f"every fake package is read (got {sorted(names)})")
check(all(p["licence"] for p in manifest["packages"]), "every package names its licence")
text = (out / "train.txt").read_text() + (out / "val.txt").read_text()
check("var secret" not in text, "scripts are dropped from HTML")
check("Home | Next | Previous" not in text, "navigation is dropped from HTML")
check("Copyright the Advanced Bash-Scripting Guide authors" not in text,
      "a short line repeated in many documents is dropped")
check(text.count(shared) == 1, f"a shared paragraph is kept once (found {text.count(shared)})")
check("00-database" not in text, "dictd headers are dropped")
check("lantern 7, lamp:" in text, "WordNet synsets become 'words: gloss' lines")
n_docs = text.count("\n\x1e\n")
check(n_docs == manifest["splits"]["train"]["documents"] + manifest["splits"]["val"]["documents"],
      "every document ends with a record-separator line")
r = run(sys.executable, tool, "--check", out)
check("no shared document or paragraph" in r.stdout, "--check passes on the written corpus")

# A planted overlap: a train document copied into validation must be caught.
bad = work / "bad"
shutil.copytree(out, bad)
first_train = (bad / "train.txt").read_text().split("\n\x1e\n")[0]
with open(bad / "val.txt", "a") as f:
    f.write(first_train + "\n\x1e\n")
r = run(sys.executable, tool, "--check", bad, ok=False)
check(r.returncode != 0, "--check fails on a planted overlap")
check("validation documents are also in train" in r.stderr, "--check names the overlap")

# The same packages through the script, when a fathom-prepare with sentencepiece is given.
def manifest_bytes(corpus):
    return json.loads((corpus / "text/manifest.json").read_text())["splits"]["train"]["bytes"]


if build is not None:
    corpus = work / "corpus"
    env = dict(os.environ, FATHOM_NO_APT="1")
    r = subprocess.run(["bash", str(repo / "scripts/depth_corpus.sh"), "bundle", "--packages", str(pk),
                        "--dir", str(corpus), "--build", str(build), "--vocab", "400", "--part-mb", "0.05"],
                       capture_output=True, text=True, env=env, cwd=repo)
    print(r.stdout[-2000:], r.stderr[-2000:])
    check(r.returncode == 0, "depth_corpus.sh bundle succeeds")
    for f in ("parts.txt", "train-0.txt.xz", "val.txt.xz", "tokenizer.model", "dataset.json", "manifest.json"):
        check((corpus / "bundle" / f).is_file(), f"the bundle holds {f}")
    # The training text is cut into parts of at most 50 kB, part k in folder bundle-k.
    parts = [l.split() for l in (corpus / "bundle/parts.txt").read_text().splitlines()]
    check(len(parts) >= 2, f"the training text is cut into parts (got {len(parts)})")
    check(all((corpus / p).is_file() for p, _ in parts), "every part listed is in its folder")
    check(sum(int(n) for _, n in parts) == manifest_bytes(corpus), "the parts add up to the training text")
    check(all(p.startswith("bundle/" if i == 0 else f"bundle-{i}/") for i, (p, _) in enumerate(parts)),
          "part k is in bundle-k (part 0 in bundle)")
    bundle = json.loads((corpus / "bundle/dataset.json").read_text())
    check(bundle["tokenizer"]["vocab_size"] == 400, "the bundle's tokenizer has the vocabulary asked for")
    check(bundle["train"]["tokens"] > 0 and bundle["val"]["tokens"] > 0, "both splits have tokens")
    shutil.rmtree(corpus / "shards")
    shutil.rmtree(corpus / "text")
    # A part not carried: refused, naming it.
    last = corpus / parts[-1][0]
    hidden = work / "hidden-part"
    shutil.move(str(last.parent), str(hidden))
    r = subprocess.run(["bash", str(repo / "scripts/depth_corpus.sh"), "shards", "--dir", str(corpus),
                        "--build", str(build)], capture_output=True, text=True, env=env, cwd=repo)
    check(r.returncode != 0 and parts[-1][0] in r.stderr and "is missing" in r.stderr,
          f"shards names a missing part (got: {r.stderr.strip()[-200:]})")
    shutil.move(str(hidden), str(last.parent))
    r = subprocess.run(["bash", str(repo / "scripts/depth_corpus.sh"), "shards", "--dir", str(corpus),
                        "--build", str(build)], capture_output=True, text=True, env=env, cwd=repo)
    print(r.stdout[-2000:], r.stderr[-2000:])
    check(r.returncode == 0, "depth_corpus.sh shards rebuilds the shards from the bundle alone")
    again = json.loads((corpus / "shards/dataset.json").read_text())
    check(again["train"]["tokens"] == bundle["train"]["tokens"] and
          again["val"]["tokens"] == bundle["val"]["tokens"], "the rebuilt shards have the bundle's tokens")
    r = subprocess.run(["bash", str(repo / "scripts/depth_corpus.sh"), "check", "--dir", str(corpus)],
                       capture_output=True, text=True, cwd=repo)
    check(r.returncode == 0, "depth_corpus.sh check passes")

if failures:
    print(f"{len(failures)} check(s) failed", file=sys.stderr)
    sys.exit(1)
print("corpus_text: all checks passed")
