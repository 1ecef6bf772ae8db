#!/usr/bin/env python3
"""Proves the crate's layering: no import cycle between modules, and each layer imports only
from the layers below it.

Reads every `crate::…` path in `src/` (imports and inline paths alike, outside comments and
`#[cfg(test)]` code; tests may reach across layers), at two levels:

1. top-level modules must respect LAYERS (lowest first) — this also rules out every cycle
   between them;
2. inside each layer, the graph between its files (`backend::wake` → `backend::watcher`…) must
   be acyclic (re-exports through a folder's `mod.rs` are resolved to the defining file when the
   name is defined in exactly one file of the folder; otherwise they count as the folder).

Exit status 0 when both hold; otherwise every violation and cycle is printed. Run by `make lint`.
"""
import os
import re
import sys

# Lowest first. A module may import from the ones before it, never after.
LAYERS = ["config", "listen", "providers", "idle", "metrics", "backend", "routes", "wait", "http", "stream", "admin", "assemble", "lib"]

ROOT = os.environ.get("SRC") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
PATH = re.compile(r"crate::((?:[A-Za-z_][A-Za-z0-9_]*)(?:::[A-Za-z_][A-Za-z0-9_]*)*)")
SUPER = re.compile(r"\bsuper::")
USE_GROUP = re.compile(r"use crate::([a-z_][a-z0-9_:]*)::\{([^;]*)\}", re.S)


def module_of(path):
    """src/backend/wake.rs → ['backend', 'wake']; src/http/mod.rs → ['http']; lib.rs → ['lib']."""
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    return rel


def code_of(text):
    """The text without comments and without `#[cfg(test)]` items (to the end of the file)."""
    cut = text.find("#[cfg(test)]")
    if cut >= 0:
        text = text[:cut]
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def main():
    files = {}
    for folder, _, names in os.walk(ROOT):
        for name in names:
            if name.endswith(".rs"):
                path = os.path.join(folder, name)
                files[tuple(module_of(path))] = code_of(open(path, encoding="utf-8").read())
    if ("main",) in files:
        del files[("main",)]  # The binary is a client of the library, not a layer of it.

    defined = {}  # (folder…, item) → files defining it
    for module, code in files.items():
        for item in re.findall(r"^\s*pub(?:\([a-z]+\))? (?:async )?(?:fn|struct|enum|trait|type|const|static|mod) ([A-Za-z_][A-Za-z0-9_]*)", code, re.M):
            for depth in range(1, len(module)):
                defined.setdefault(module[:depth] + (item,), set()).add(module)

    def resolve(segments):
        """The file a `crate::a::b::Item` path points into."""
        best = None
        for n in range(len(segments), 0, -1):
            if tuple(segments[:n]) in files:
                best = tuple(segments[:n])
                break
        if best is None:
            # `crate::Item`: an item of the facade itself.
            return ("lib",) if segments[0][:1].isupper() else None
        rest = segments[len(best):]
        if rest:
            owners = defined.get(best + (rest[0],), set())
            if len(owners) == 1:
                return next(iter(owners))
        return best

    edges = {}
    for module, code in files.items():
        # `super::x` is `crate::<parent>::x`.
        parent = "::".join(module[:-1])
        code = SUPER.sub(lambda m: "crate::" + (parent + "::" if parent else ""), code)
        paths = [m.group(1).split("::") for m in PATH.finditer(code)]
        for group in USE_GROUP.finditer(code):
            base = group.group(1).split("::")
            for item in re.split(r"[,\s]+", group.group(2)):
                item = item.strip().split("::")[0]
                if item and item != "self":
                    paths.append(base + [item])
        for segments in paths:
            target = resolve(segments)
            if target and target != module and not (target == module[: len(target)]):
                edges.setdefault(module, set()).add(target)

    problems = []
    rank = {name: i for i, name in enumerate(LAYERS)}
    for module, targets in sorted(edges.items()):
        for target in sorted(targets):
            a, b = module[0], target[0]
            if a == b:
                continue
            if a not in rank or b not in rank:
                problems.append(f"{'::'.join(module)} → {'::'.join(target)}: module not in LAYERS")
            elif rank[b] > rank[a]:
                problems.append(
                    f"{'::'.join(module)} imports {'::'.join(target)}: layer {b} is above {a}"
                )

    # Cycles among files (Tarjan's strongly connected components).
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                sccs.append(component)

    sys.setrecursionlimit(10000)
    for v in sorted(files):
        if v not in index:
            visit(v)
    for component in sccs:
        problems.append("import cycle: " + " ↔ ".join(sorted("::".join(m) for m in component)))

    edge_count = sum(len(t) for t in edges.values())
    if problems:
        print("\n".join(problems))
        print(f"check-layers: {len(problems)} problem(s) in {len(files)} modules")
        return 1
    print(
        f"check-layers: {len(files)} modules, {edge_count} imports, no cycle, "
        f"layers {' < '.join(LAYERS)} respected"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
