#!/usr/bin/env python3
"""Checks the layering of src/ (see /work/shared/DESIGN.md, "Wave 2", and STYLE.md):

1. No cycles among modules. A module is a file (`foo/mod.rs` is `foo`); an import of an item
   (`crate::shard::session::Session`) is an edge to the module that holds it
   (`shard::session`), following `pub use` re-exports to where the item is defined. A module's
   own descendants are part of it: a parent declaring (`mod x`) and using its children is not
   an edge, a child using its parent is.
2. Nothing under src/shard imports from `crate::net` (the shard sits below the sockets).
3. No function longer than 70 lines, counted from its `fn` line to the closing brace at the
   same indentation. Tests are left out: `#[cfg(test)]` modules and `tests.rs` files (for the
   import graph too, since nothing imports a test module).

Usage: scripts/check-layers.py [--graph] [SRC_DIR]   (default SRC_DIR: the repository's src)
Prints every finding, one per line, and exits 1 if there is any; --graph first prints every
module with the modules it imports.
"""
import os
import re
import sys

FN_LINES_MAX = 70
# The crate's name as the binary (src/main.rs) spells its library.
CRATE_NAME = "ringcast"
# Layer rules: modules under the first may not import modules under the second.
FORBIDDEN = [("shard", "net")]


def module_of(src, path):
    """`src/shard/session.rs` -> ('shard', 'session'); `src/shard/mod.rs` -> ('shard',)."""
    rel = os.path.relpath(path, src)[: -len(".rs")].split(os.sep)
    if rel[-1] == "mod" or (len(rel) == 1 and rel[0] == "lib"):
        rel = rel[:-1]
    return tuple(rel)


def strip_comments_and_strings(text):
    """Blanks comments and string/char literals, keeping line breaks (so line numbers hold)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and not re.match(r"\w", text[i - 1:i] or " "):
            hashes = re.match(r"r(#*)\"", text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            j = n if end < 0 else end + 1 + len(hashes)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('"' + re.sub(r"[^\n]", " ", text[i + 1:j]) + '"')
            i = j + 1
        elif c == "'":
            # A char literal ('a', '\n', '\u{1F600}'); otherwise a lifetime.
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", text[i:])
            if m:
                out.append(" " * len(m.group(0)))
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def test_module_spans(text):
    """(start, end) offsets of every `#[cfg(test)] mod name { ... }` block."""
    spans = []
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{", text):
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        spans.append((m.start(), j))
    return spans


def blank_spans(text, spans):
    for start, end in spans:
        text = text[:start] + re.sub(r"[^\n]", " ", text[start:end]) + text[end:]
    return text


def expand_use_tree(tree):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e'] (renames and globs dropped)."""
    tree = re.sub(r"\s+", "", tree)
    brace = tree.find("{")
    if brace < 0:
        tree = re.sub(r"as\w+$", "", tree.replace("::*", ""))
        return [tree] if tree else []
    prefix, body = tree[:brace], tree[brace + 1:tree.rfind("}")]
    parts, depth, start = [], 0, 0
    for i, c in enumerate(body):
        depth += {"{": 1, "}": -1}.get(c, 0)
        if c == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    paths = []
    for part in filter(None, parts):
        for sub in expand_use_tree(part):
            paths.append(prefix + sub if sub != "self" else prefix.rstrip(":"))
    return paths


class Crate:
    def __init__(self, src):
        self.src = src
        self.files = {}  # module -> (path, cleaned text without test modules)
        test_only = set()  # modules declared `#[cfg(test)] mod name;`
        for root, _, names in os.walk(src):
            for name in sorted(names):
                if not name.endswith(".rs") or name == "tests.rs":
                    continue
                path = os.path.join(root, name)
                module = module_of(src, path)
                text = strip_comments_and_strings(open(path, encoding="utf-8").read())
                for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+(\w+)\s*;", text):
                    test_only.add(module + (m.group(3),))
                text = blank_spans(text, test_module_spans(text))
                self.files[module] = (path, text)
        for module in list(self.files):
            if any(module[: len(t)] == t for t in test_only):
                del self.files[module]
        self.modules = set(self.files)
        self.reexports = {m: self.parse_reexports(m) for m in self.modules}

    def parse_reexports(self, module):
        """Names a module re-exports with `pub use`, mapped to the paths they stand for."""
        found = {}
        for m in re.finditer(r"\bpub(\([^)]*\))?\s+use\s+([^;]+);", self.files[module][1]):
            for path in expand_use_tree(m.group(2)):
                found[path.split("::")[-1]] = path
        return found

    def absolute(self, module, path):
        """The segments of `path` as seen from `module`, from the crate root; None if external."""
        segs = [s for s in path.split("::") if s]
        if not segs:
            return None
        here = list(module)
        if module == ("main",):
            here = []  # the binary reaches the library by its name
        if segs[0] in ("crate", CRATE_NAME):
            return segs[1:]
        if segs[0] == "self":
            return here + segs[1:]
        if segs[0] == "super":
            base = list(module)
            while segs and segs[0] == "super":
                base, segs = base[:-1], segs[1:]
            return base + segs
        if tuple(here + segs[:1]) in self.modules:
            return here + segs  # a child module, named without `self::`
        return None

    def resolve(self, module, path, depth=0):
        """The module holding what `path` (written in `module`) names, or None."""
        segs = self.absolute(module, path)
        if segs is None:
            return None
        found, i = (), 0
        while i < len(segs) and tuple(segs[: i + 1]) in self.modules:
            i += 1
            found = tuple(segs[:i])
        if i < len(segs) and depth < 8:
            target = self.reexports.get(found, {}).get(segs[i])
            if target is not None:
                deeper = self.resolve(found, target, depth + 1)
                if deeper is not None:
                    return deeper
        return found

    def imports(self, module):
        """(target module, line number, path text) for every crate path used in `module`."""
        path, text = self.files[module]
        seen = []
        uses = []
        for m in re.finditer(r"\buse\s+([^;]+);", text):
            line = text.count("\n", 0, m.start()) + 1
            for p in expand_use_tree(m.group(1)):
                uses.append((line, p))
        inline = r"(?<![\w:])((?:crate|super|self|%s)(?:::\w+)+)" % CRATE_NAME
        for m in re.finditer(inline, text):
            if re.search(r"\buse\s+[^;]*$", text[max(0, m.start() - 300):m.start()]):
                continue  # part of a `use`, handled above
            uses.append((text.count("\n", 0, m.start()) + 1, m.group(1)))
        for line, p in uses:
            target = self.resolve(module, p)
            if target is None or target == module:
                continue
            seen.append((target, line, p))
        return seen


def name(module):
    return "::".join(module) or "crate"


def is_descendant(child, parent):
    return len(child) > len(parent) and child[: len(parent)] == parent


def cycles(crate):
    """Strongly connected components with more than one module, with the edges inside."""
    edges = {}
    for module in crate.modules:
        for target, line, path in crate.imports(module):
            if is_descendant(target, module):
                continue
            edges.setdefault(module, {}).setdefault(target, []).append((line, path))
    index, low, stack, on_stack, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, {})):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                sccs.append(sorted(scc))

    sys.setrecursionlimit(10000)
    for v in sorted(crate.modules):
        if v not in index:
            visit(v)
    findings = []
    for scc in sccs:
        members = set(scc)
        sites = []
        for a in scc:
            for b, where in sorted(edges.get(a, {}).items()):
                if b in members:
                    line, path = where[0]
                    sites.append(f"{crate.files[a][0]}:{line} {name(a)} -> {name(b)} ({path})")
        findings.append("cycle among " + ", ".join(map(name, scc)) + ":\n    " + "\n    ".join(sites))
    return findings


def layer_violations(crate):
    findings = []
    for module in sorted(crate.modules):
        for lower, upper in FORBIDDEN:
            if module[:1] != (lower,):
                continue
            for target, line, path in crate.imports(module):
                if target[:1] == (upper,):
                    findings.append(
                        f"layer: {crate.files[module][0]}:{line}: {name(module)} imports {path} "
                        f"(nothing under {lower} may import {upper})")
    return findings


FN_RE = re.compile(r"^(\s*)(pub(\([^)]*\))?\s+)?((const|async|unsafe|extern\s+\"\w*\")\s+)*fn\s+(\w+)")


def long_functions(crate):
    findings = []
    for module in sorted(crate.modules):
        path, text = crate.files[module]
        lines = text.split("\n")
        for i, line in enumerate(lines):
            m = FN_RE.match(line)
            if not m:
                continue
            indent = m.group(1)
            end = closing_line(lines, i, indent)
            if end is None:
                continue
            length = end - i + 1
            if length > FN_LINES_MAX:
                findings.append(
                    f"length: {path}:{i + 1}: fn {m.group(6)} is {length} lines (at most {FN_LINES_MAX})")
    return findings


def closing_line(lines, start, indent):
    """Index of the line closing the fn that starts at `start`; None for a bodiless fn."""
    depth = 0
    opened = False
    for j in range(start, len(lines)):
        for c in lines[j]:
            if c == "{":
                depth += 1
                opened = True
            elif c == "}":
                depth -= 1
            elif c == ";" and not opened and depth == 0:
                return None  # a declaration without a body
        if opened and depth == 0:
            if j == start:
                return j
            if re.match(re.escape(indent) + r"\}", lines[j]):
                return j
            return j  # closed at another indentation: count to where it closed
    return None


def print_graph(crate):
    for module in sorted(crate.modules):
        targets = sorted({t for t, _, _ in crate.imports(module) if not is_descendant(t, module)})
        print(f"{name(module)} -> {', '.join(map(name, targets)) or '-'}")


def main():
    args = sys.argv[1:]
    graph = "--graph" in args
    args = [a for a in args if a != "--graph"]
    here = os.path.dirname(os.path.abspath(__file__))
    src = args[0] if args else os.path.join(here, "..", "src")
    crate = Crate(os.path.normpath(src))
    if graph:
        print_graph(crate)
    findings = cycles(crate) + layer_violations(crate) + long_functions(crate)
    for finding in findings:
        print(finding)
    if findings:
        print(f"{len(findings)} finding(s)", file=sys.stderr)
        return 1
    print("check-layers: no cycles, no layer violations, no function over "
          f"{FN_LINES_MAX} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
