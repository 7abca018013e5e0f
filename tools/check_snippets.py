#!/usr/bin/env python3
"""Checks that the C++ snippets the docs mark as compiled are the code that is.

A fenced block preceded by the line

    <!-- compiled: examples/doc_snippets.cpp#name -->

must equal, line for line after removing common indentation, the region of
that file between "// [snippet name]" and "// [end]" (or the whole file when
no "#name" is given). The file itself is compiled by the examples' meson.build,
so a snippet that no longer compiles fails the build, and a snippet edited in
the docs alone fails this check.

Usage: check_snippets.py ROOT    (exit 0: all match; 1: a mismatch, printed)
"""
import pathlib
import re
import sys
import textwrap

MARK = re.compile(r"^<!-- compiled: ([^#\s]+)(?:#([\w-]+))? -->\s*$")


def dedent(lines):
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return textwrap.dedent("\n".join(lines)).rstrip().splitlines()


def region(path, name):
    lines = path.read_text().splitlines()
    if name is None:
        return dedent(lines)
    start = "// [snippet %s]" % name
    begin = [i for i, l in enumerate(lines) if l.strip() == start]
    if len(begin) != 1:
        raise ValueError("%s: %d regions named %s" % (path, len(begin), name))
    end = next((i for i in range(begin[0] + 1, len(lines)) if lines[i].strip() == "// [end]"), None)
    if end is None:
        raise ValueError("%s: region %s has no // [end]" % (path, name))
    return dedent(lines[begin[0] + 1:end])


def blocks(md):
    """(line number, target file, region name, block lines) for each marked block."""
    lines = md.read_text().splitlines()
    for i, line in enumerate(lines):
        m = MARK.match(line)
        if not m:
            continue
        if i + 1 >= len(lines) or not lines[i + 1].strip().startswith("```"):
            raise ValueError("%s:%d: the mark is not followed by a fenced block" % (md, i + 1))
        end = next(j for j in range(i + 2, len(lines)) if lines[j].strip().startswith("```"))
        yield i + 1, m.group(1), m.group(2), dedent(lines[i + 2:end])


def main(root):
    root = pathlib.Path(root)
    docs = [root / "README.md"] + sorted((root / "docs").rglob("*.md"))
    checked = failed = 0
    for md in docs:
        for line, target, name, block in blocks(md):
            checked += 1
            try:
                code = region(root / target, name)
            except (OSError, ValueError) as e:
                print("%s:%d: %s" % (md.relative_to(root), line, e))
                failed += 1
                continue
            if code != block:
                failed += 1
                print("%s:%d: differs from %s%s" % (md.relative_to(root), line, target,
                                                    "#" + name if name else ""))
                for a, b in zip(block + [""] * len(code), code + [""] * len(block)):
                    if a != b:
                        print("  docs: %r\n  code: %r" % (a, b))
                        break
    print("doc snippets: %d checked, %d differ" % (checked, failed))
    return 1 if failed or not checked else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
