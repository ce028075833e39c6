#!/usr/bin/env python3
# Compiles every C++ example of fathom's documentation: each ```cpp block of README.md and docs/*.md
# that holds a `main` is written to its own file and compiled (-fsyntax-only: templates are
# instantiated, no code is generated), so an example that stops compiling fails this test, naming
# the page and the line where the block starts. Blocks without a `main` are fragments and skipped.
"""usage: check_examples.py ROOT WORK -- CXX [compiler flags...]"""

import concurrent.futures
import os
import re
import subprocess
import sys
from pathlib import Path

FENCE = re.compile(r"^```cpp\s*$")


def blocks(page):
    """(first line number, text) of each ```cpp block of a Markdown page."""
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        if FENCE.match(lines[i]):
            start = i + 1
            j = start
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            yield start + 1, "\n".join(lines[start:j]) + "\n"
            i = j
        i += 1


def main():
    if len(sys.argv) < 5 or "--" not in sys.argv:
        print(__doc__, file=sys.stderr)
        return 2
    sep = sys.argv.index("--")
    root, work = Path(sys.argv[1]), Path(sys.argv[2])
    compile_cmd = sys.argv[sep + 1:]
    work.mkdir(parents=True, exist_ok=True)
    pages = [root / "README.md"] + sorted((root / "docs").rglob("*.md"))
    jobs = []
    for page in pages:
        for line, text in blocks(page):
            if not re.search(r"\bint\s+main\s*\(", text):
                continue
            rel = page.relative_to(root)
            name = re.sub(r"[^A-Za-z0-9]+", "_", str(rel)) + f"_{line}.cpp"
            src = work / name
            src.write_text(f"// {rel}, the block starting at line {line}\n#line {line} \"{rel}\"\n" + text)
            jobs.append((f"{rel}:{line}", src))
    if not jobs:
        print("check_examples: no C++ examples with a main found", file=sys.stderr)
        return 1

    def build(job):
        where, src = job
        r = subprocess.run(compile_cmd + ["-fsyntax-only", str(src)], capture_output=True, text=True)
        return where, r.returncode, r.stdout + r.stderr

    failed = 0
    workers = max(1, int(os.environ.get("FATHOM_DOC_JOBS", "2")))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for where, rc, out in pool.map(build, jobs):
            if rc == 0:
                print(f"ok      {where}")
            else:
                failed += 1
                print(f"FAILED  {where}\n{out}")
    print(f"check_examples: {len(jobs) - failed} of {len(jobs)} examples compile")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
