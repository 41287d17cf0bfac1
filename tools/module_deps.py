#!/usr/bin/env python3
"""Prints the crate's top-level modules, the modules each imports
(`use crate::x`, `crate::x::` paths, and `super::` inside a top-level
module's files resolve to itself), and any import cycle among them.
Exits 1 when there is a cycle.

    python3 tools/module_deps.py
"""
import pathlib
import re
import sys

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"


def top_module(path):
    rel = path.relative_to(SRC).with_suffix("")
    parts = rel.parts
    if parts[0] == "bin":
        return "bin"
    return parts[0] if parts[0] not in ("lib",) else None


def strip_tests(text):
    # Unit tests may import anything; only the code's own edges count.
    i = text.find("#[cfg(test)]\nmod tests")
    return text if i < 0 else text[:i]


deps = {}
for f in sorted(SRC.rglob("*.rs")):
    m = top_module(f)
    if m is None or f.name == "tests.rs":
        continue
    text = strip_tests(f.read_text())
    found = set(re.findall(r"\bcrate::(\w+)", text))
    if m == "bin":
        found = set(re.findall(r"\blayerskip::(\w+)", text))
    deps.setdefault(m, set()).update(d for d in found if d != m)
mods = set(deps)
for m in deps:
    deps[m] &= mods | {"lib"}
    deps[m].discard("lib")

for m in sorted(deps):
    print(f"{m:12} -> {', '.join(sorted(deps[m])) or '-'}")

# Cycles: depth-first search over the graph.
state, stack, cycles = {}, [], []


def visit(m):
    state[m] = 1
    stack.append(m)
    for d in sorted(deps.get(m, ())):
        if state.get(d) == 1:
            cycles.append(stack[stack.index(d):] + [d])
        elif d not in state:
            visit(d)
    stack.pop()
    state[m] = 2


for m in sorted(deps):
    if m not in state:
        visit(m)
if cycles:
    for c in cycles:
        print("cycle: " + " -> ".join(c))
    sys.exit(1)
print("no import cycles")
