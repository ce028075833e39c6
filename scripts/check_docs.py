#!/usr/bin/env python3
"""Runs the commands of README.md and docs/*.md as written, on the CPU.

Every command line of a shell code block (``` with no language, sh, bash or console, and indented
blocks) that starts with one of fathom's programs, scripts or tools, or with cmake, runs from the
repository root, in page order, with build/release/bin on PATH (so `fathom-train ...` means the
programs that `cmake --build build/release` made). Commands that need a GPU or data that is not
there are listed as skipped with the reason; scripts/test.sh is CI's and skipped. The run folders
the commands name (--out under runs/ or /tmp, and docs/data.md's .data/fortunes-jargon*) are removed first, so the pages' sequences (train,
then resume, diagnose, generate) run as on a fresh clone. Exit status 1 if any command fails.

usage: scripts/check_docs.py [--list] [--only REGEX] [--timeout S]
"""

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROGRAMS = ("fathom-train", "fathom-diagnose", "fathom-prepare", "fathom-bench", "cmake", "ctest")
PATHS = ("scripts/", "tools/", "bench/", "docs/results/", "build", "./build")
GPU = ("--device cuda", "fathom-bench", "scripts/gpu.sh", "docs/results/run.sh", "kernel_profile",
       "build/gpu", "bench/run.sh", "FATHOM_ENABLE_CUDA=ON")


def commands(page):
    """(line, command) for each command line of the page's shell blocks, continuations joined."""
    lines = page.read_text(encoding="utf-8").splitlines()
    out, fence, prev_blank = [], None, True
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^```(\w*)", line)
        if m:
            fence = None if fence is not None else m.group(1)
            i += 1
            prev_blank = False
            continue
        in_shell = fence in ("", "sh", "bash", "console")
        indented = fence is None and line.startswith("    ") and prev_blank_block(lines, i)
        if in_shell or indented:
            text, start = line.strip(), i + 1
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text[:-1].rstrip() + " " + lines[i].strip()
            text = re.sub(r"\s+#.*$", "", text).removeprefix("$ ").strip()
            if text and not text.startswith("#") and (fence in ("sh", "bash", "console") or is_command(text)):
                out.append((start, text))
        prev_blank = not line.strip()
        i += 1
    return out


def prev_blank_block(lines, i):
    """Whether line i belongs to an indented code block (preceded by a blank line or block line)."""
    j = i - 1
    while j >= 0 and lines[j].startswith("    "):
        j -= 1
    return j < 0 or not lines[j].strip()


def is_command(text):
    first = text.split()[0]
    return first in PROGRAMS or first.startswith(PATHS)


SYNOPSIS = re.compile(r"\[--|\.\.\.|\|metrics|\b(RUN|RUNS_DIR|DIR|CHECKPOINT|INPUTS|TOKENS)\b")


def skip_reason(cmd):
    if SYNOPSIS.search(cmd):
        return "a synopsis (placeholders), not a command"
    for g in GPU:
        if g in cmd:
            return f"needs a GPU ({g})"
    if cmd.startswith("scripts/test.sh"):
        return "CI's test command (17 minutes); .ci/run runs it"
    return None


def missing_data(cmd):
    """Checked when the command's turn comes: an earlier command may have prepared the data."""
    words = shlex.split(cmd)
    for flag in ("--data", "--val-data"):
        if flag in words:
            pattern = words[words.index(flag) + 1]
            if not Path(pattern).is_absolute() and not list(REPO.glob(pattern.removeprefix("./"))):
                return f"needs data {pattern} (not prepared here)"
    return None


def out_folders(cmd):
    words = shlex.split(cmd)
    return [Path(words[k + 1]) for k, w in enumerate(words[:-1]) if w == "--out"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true", help="list the commands and what would be skipped; run nothing")
    ap.add_argument("--only", help="run only commands matching this regular expression")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds one command may take (default 1800)")
    a = ap.parse_args()
    pages = [REPO / "README.md"] + sorted(p for p in (REPO / "docs").glob("*.md"))
    todo = []
    for page in pages:
        for line, cmd in commands(page):
            if a.only and not re.search(a.only, cmd):
                continue
            todo.append((f"{page.relative_to(REPO)}:{line}", cmd, skip_reason(cmd)))
    if a.list:
        for where, cmd, why in todo:
            print(f"{'skip' if why else 'run '}  {where:24} {cmd}" + (f"   [{why}]" if why else ""))
        return 0
    for where, cmd, why in todo:
        for d in out_folders(cmd) if not why else []:
            full = d if d.is_absolute() else REPO / d
            if (str(d).startswith(("runs/", "/tmp/", ".data/fortunes-jargon"))) and full.exists():
                shutil.rmtree(full)
    env = dict(os.environ)
    env["PATH"] = f"{REPO / 'build/release/bin'}:{env['PATH']}"
    failed = []
    for where, cmd, why in todo:
        why = why or missing_data(cmd)
        if why:
            print(f"check_docs: skip {where}: {cmd}\n            ({why})", flush=True)
            continue
        if cmd.startswith("sudo ") and os.geteuid() == 0 and not shutil.which("sudo"):
            cmd = cmd[len("sudo "):]  # root without sudo (a container)
        print(f"check_docs: run  {where}: {cmd}", flush=True)
        t0 = time.monotonic()
        try:
            r = subprocess.run(["bash", "-c", cmd], cwd=REPO, env=env, timeout=a.timeout)
            rc = r.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        took = time.monotonic() - t0
        print(f"check_docs: {'ok' if rc == 0 else 'FAILED (' + str(rc) + ')'} in {took:.0f} s: {where}", flush=True)
        if rc != 0:
            failed.append(f"{where}: {cmd}")
    print("\ncheck_docs: " + ("every command ran" if not failed else f"{len(failed)} failed:\n  " + "\n  ".join(failed)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
