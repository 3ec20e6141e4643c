#!/usr/bin/env python3
"""Layout rules of the code base (docs/design.md), checked by the test command.

* No production source file over 800 lines. Production lines are a file's
  lines outside its `#[cfg(test)]` modules; tests/, benches, fuzz/ and the
  benchmark binaries (integration/src/bin) are not production.
* No function over 100 lines, counted from its `fn` line to its closing
  brace (raw lines, comments included), in every Rust file, tests
  included; a benchmark binary's `main` is the one exception.

clippy's too_many_lines (clippy.toml) enforces the same bound on code lines;
this script also counts comments and blank lines, and file sizes.
"""
import re
import subprocess
import sys

MAX_FILE, MAX_FN = 800, 100
FN = re.compile(r"^(\s*)(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+\"[^\"]*\"\s+)?fn\s+(\w+)")


def production(path):
    if not path.endswith(".rs") or path.startswith("fuzz/"):
        return False
    if "/tests/" in path or path.startswith("tests/") or "/benches/" in path:
        return False
    return not path.startswith("integration/src/bin/")


def test_module_lines(lines):
    """Indices of lines inside `#[cfg(test)]` items (a module or a function)."""
    skip = set()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "#[cfg(test)]":
            depth, started, j = 0, False, i
            while j < len(lines):
                depth += lines[j].count("{") - lines[j].count("}")
                started = started or "{" in lines[j]
                skip.add(j)
                if (started and depth <= 0) or (not started and lines[j].rstrip().endswith(";")):
                    break
                j += 1
            i = j + 1
            continue
        i += 1
    return skip


def long_functions(lines, skip):
    out = []
    for i, line in enumerate(lines):
        if i in skip:
            continue
        m = FN.match(line)
        if not m:
            continue
        indent = m.group(1)
        # a declaration without a body (trait method) ends with ';'
        j = i
        while j < len(lines) and "{" not in lines[j] and not lines[j].rstrip().endswith(";"):
            j += 1
        if j >= len(lines) or lines[j].rstrip().endswith(";") and "{" not in lines[j]:
            continue
        if lines[j].rstrip().endswith("}") and j == i and lines[j].count("{") == lines[j].count("}"):
            continue
        close = indent + "}"
        k = j + 1
        while k < len(lines) and lines[k].rstrip() != close:
            k += 1
        length = k - i + 1
        if length > MAX_FN:
            out.append((i + 1, m.group(8), length))
    return out


def main():
    files = subprocess.run(["git", "ls-files", "*.rs"], capture_output=True, text=True, check=True).stdout.split()
    bad = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        if production(path):
            skip = test_module_lines(lines)
            prod = sum(1 for i in range(len(lines)) if i not in skip)
            if prod > MAX_FILE:
                bad.append(f"{path}: {prod} production lines (max {MAX_FILE})")
        bench = path.startswith("integration/src/bin/bench-")
        for line, name, length in long_functions(lines, set()):
            if not (bench and name == "main"):
                bad.append(f"{path}:{line}: fn {name} is {length} lines (max {MAX_FN})")
    for b in bad:
        print(b)
    if bad:
        print(f"layout check failed: {len(bad)} finding(s)", file=sys.stderr)
        return 1
    print(f"layout: every production file <= {MAX_FILE} lines, every function <= {MAX_FN} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
