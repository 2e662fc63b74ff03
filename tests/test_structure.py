"""The repository's shape: imports point one way, committed results name no machine's paths, and the README's
and docs' relative links lead to files that exist. No torch, no data: these read the files as text."""
import ast
import json
import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(p.stem for p in ROOT.glob("*.py"))


# -----------------------------------------------------------------------------
# imports point one way

def local_imports(path):
    """The top-level modules of this repository that the file at `path` imports, anywhere in it (a lazy import
    inside a function counts: it is a dependency all the same)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module.split(".")[0]]
        else:
            continue
        out |= {n for n in names if n in MODULES}
    return out


def import_graph():
    """{module: sorted modules it imports}, over every top-level .py file."""
    return {m: sorted(local_imports(ROOT / f"{m}.py") - {m}) for m in MODULES}


def find_cycles(graph):
    """One cycle [a, b, ..., a] per strongly connected component of more than one module (Tarjan), so each
    tangle is named once, whatever its length."""
    index, low, stack, on_stack, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(set(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [cycle_through(min(comp), comp, graph) for comp in comps]


def cycle_through(start, comp, graph):
    """A shortest path start -> ... -> start inside the component comp (breadth first)."""
    prev, frontier = {}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in graph[v]:
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return path[::-1] + [start]
                if w in comp and w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt


def test_find_cycles_finds_them():
    """The search itself: a two-file and a three-file cycle are named, a chain is not."""
    g = {"a": ["b"], "b": ["a"], "c": ["d"], "d": ["e"], "e": ["c"], "f": ["a"], "g": []}
    got = sorted(" -> ".join(c) for c in find_cycles(g))
    assert got == ["a -> b -> a", "c -> d -> e -> c"]
    assert find_cycles({"a": ["b"], "b": ["c"], "c": []}) == []


def test_no_import_cycles():
    """No file imports a file that imports it back, directly or through others: what two files share lives in the
    lower one, or in a library file below both."""
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(f"{m}.py" for m in c) for c in cycles)


# -----------------------------------------------------------------------------
# committed results hold paths relative to the repository, or none

ROOTS = r"(?:root|work|home|tmp|Users|mnt|scratch|data|private|var|opt|srv)"
# a JSON string that is a path from the root: /work/fresh/x, /tmp/x, /root (not a unit such as "/s")
ABSOLUTE = re.compile(rf"^/(?:[\w.~-]+/|{ROOTS}$)")
# in text, a path from one of the usual roots: " /root/x", "(/tmp/y" (not "41/150" or "runs/main")
ABSOLUTE_IN_TEXT = re.compile(rf"(?:^|[\s\"'`(=,:\[])(/{ROOTS}(?:/[^\s\"'`),\]]*)?)(?![\w.-])")


def absolute_paths(x, key="$"):
    """(key path, value) of every string in a JSON value (keys included) that is an absolute path."""
    if isinstance(x, dict):
        for k, v in x.items():
            if isinstance(k, str) and ABSOLUTE.match(k):
                yield f"{key} (a key)", k
            yield from absolute_paths(v, f"{key}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from absolute_paths(v, f"{key}[{i}]")
    elif isinstance(x, str) and ABSOLUTE.match(x):
        yield key, x


def committed_results():
    """Every JSON, Markdown and CSV file under results/, every JSON file under docs/, and the ones git tracks under
    study/ (its run folders, checkpoints and their configs, are ignored and stay on the machine that ran them)."""
    files = [p for ext in ("json", "md", "csv") for p in (ROOT / "results").rglob(f"*.{ext}")]
    try:
        tracked = subprocess.run(["git", "ls-files", "study"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    except OSError:   # no git: a copy without history has no study results to check
        tracked = []
    files += [ROOT / t for t in tracked if t.endswith((".json", ".md"))]
    return sorted(files + list((ROOT / "docs").rglob("*.json")))


def test_absolute_paths_are_found():
    """The check itself: a JSON path and a path in text are caught, relative paths and units are not."""
    bad = {"config": {"data": "/work/fresh/data/x.hdf5", "out": "runs/main"}, "runs": [{"folder": "/root/r"}]}
    assert [k for k, _ in absolute_paths(bad)] == ["$.config.data", "$.runs[0].folder"]
    assert not list(absolute_paths({"data": "data/x.hdf5", "rate": "3 / s", "unit": "/s"}))
    assert ABSOLUTE_IN_TEXT.search("written to /tmp/abc/table.md")
    assert not ABSOLUTE_IN_TEXT.search("runs/main/table.md, 41/150 = 0.27, a/b")


def test_committed_results_hold_no_absolute_paths():
    """A result written on one machine must read the same on another: paths relative to the repository, or none."""
    found = []
    for path in committed_results():
        rel = path.relative_to(ROOT)
        if path.suffix == ".json":
            found += [f"{rel}: {key} = {value!r}" for key, value in absolute_paths(json.loads(path.read_text()))]
        else:
            for n, line in enumerate(path.read_text().splitlines(), 1):
                found += [f"{rel}:{n}: {m!r}" for m in ABSOLUTE_IN_TEXT.findall(line)]
    assert committed_results(), "results/ holds no JSON, Markdown or CSV file: the check would pass vacuously"
    assert not found, "absolute paths in committed results:\n" + "\n".join(found)


# -----------------------------------------------------------------------------
# the README's and docs' relative links resolve

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")   # [text](target) and ![alt](target)
HTML_LINK = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"", re.IGNORECASE)


def relative_links(text):
    """The link targets of a Markdown text that name a file of the repository: no URL (scheme:), no bare anchor;
    a target's own #anchor is dropped. Links inside code (``` blocks, `spans`) are not links."""
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL)
    targets = LINK.findall(text) + HTML_LINK.findall(text)
    return [t.split("#")[0] for t in targets if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", t) and not t.startswith("#")]


def test_relative_links_are_found():
    text = ("[a](docs/x.md) ![b](fig.png) [c](https://arxiv.org/abs/1) [d](#notes) [e](docs/y.md#sec)\n"
            "`[f](not/a/link.md)` <img src=\"z.png\"> [g](mailto:a@b.c)\n```\n[h](in/code.md)\n```\n")
    assert relative_links(text) == ["docs/x.md", "fig.png", "docs/y.md", "z.png"]


def test_readme_and_docs_links_resolve():
    """Every relative link of README.md and docs/*.md leads to a file in the repository. Strict: docs/main_result.png
    (the README's main figure) must exist too."""
    pages = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
    broken = []
    for page in pages:
        for target in relative_links(page.read_text()):
            path = (page.parent / target).resolve()
            if not path.exists() or ROOT not in path.parents:
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_readme_file_map_counts_the_lines():
    """The README's file map gives each file's line count, and its first paragraph the total of the top-level .py
    files: both are wc -l of today's files, so an edit that grows a file must update them."""
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `([\w.]+\.(?:py|sh))` \| (\d+) \|", text, re.M)
    assert len(rows) > 20
    wrong = [(f, n, len((ROOT / f).read_text().splitlines())) for f, n in rows
             if int(n) != len((ROOT / f).read_text().splitlines())]
    assert not wrong, f"README file map: (file, README, wc -l): {wrong}"
    total = sum(len(p.read_text().splitlines()) for p in ROOT.glob("*.py"))
    assert f"{total:,} lines of" in text, f"the README's total should read {total:,} lines of Python"
