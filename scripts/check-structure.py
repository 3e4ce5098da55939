#!/usr/bin/env python3
"""House rules the compiler does not check, run by .ci/run:
- no two modules of a crate import each other (`crate::…`, `super::…` and `self::…`
  paths outside tests and comments);
- no source file outside tests is over 800 lines.
Exits 1 and names what breaks a rule."""
import itertools
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MAX_LINES = 800


def crates():
    for name in sorted(os.listdir(ROOT)):
        if os.path.isfile(os.path.join(ROOT, name, "Cargo.toml")) and os.path.isdir(
            os.path.join(ROOT, name, "src")
        ):
            yield name


def modules(src_dir):
    mods = {}
    for root, _, files in os.walk(src_dir):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src_dir)[:-3].replace(os.sep, "::")
            if rel.endswith("::mod"):
                rel = rel[: -len("::mod")]
            if rel.startswith("bin::"):
                continue
            name = "crate" if rel in ("lib", "main") else rel
            mods[name] = (path, open(path, encoding="utf-8").read())
    return mods


def code_of(text):
    cut = text.find("#[cfg(test)]")
    text = text if cut < 0 else text[:cut]
    return re.sub(r"//[^\n]*", "", text)


def edges(mods):
    names = set(mods)
    out = {m: set() for m in mods}
    for m, (_, text) in mods.items():
        code = code_of(text)
        parent = "::".join(m.split("::")[:-1]) or "crate"
        for ref in re.findall(r"\bcrate::([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)", code):
            parts = ref.split("::")
            target = next(
                ("::".join(parts[:k]) for k in range(len(parts), 0, -1) if "::".join(parts[:k]) in names),
                "crate",
            )
            out[m].add(target)
        for ref in re.findall(r"\bsuper::([a-z_][a-z0-9_]*|\*|\{)", code):
            cand = ref if parent == "crate" else f"{parent}::{ref}"
            out[m].add(cand if cand in names else parent)
        for ref in re.findall(r"\bself::([a-z_][a-z0-9_]*)", code):
            cand = ref if m == "crate" else f"{m}::{ref}"
            if cand in names:
                out[m].add(cand)
    return out


def main():
    bad = []
    for crate in crates():
        mods = modules(os.path.join(ROOT, crate, "src"))
        e = edges(mods)
        for a, b in itertools.combinations(sorted(mods), 2):
            if b in e[a] and a in e[b]:
                bad.append(f"{crate}: modules {a} and {b} import each other")
        for name, (path, text) in mods.items():
            n = text.count("\n")
            if n > MAX_LINES:
                bad.append(f"{os.path.relpath(path, ROOT)}: {n} lines (at most {MAX_LINES})")
    for b in bad:
        print(b)
    if bad:
        sys.exit(1)
    print("structure: no module import cycles, no source file over 800 lines")


main()
