"""A topic-classification set built offline from the standard library's own documentation: the paragraphs of the
docstrings of well-known stdlib modules, each labelled with the area its module belongs to (`source: docstrings`).

What and how, deterministically for one Python version: each module of a group (a file, or every `.py` under a
package, test folders left out) is parsed with `ast` (nothing is imported); the docstrings of the module and of its
classes and functions are split into paragraphs at blank lines; a paragraph's lines are joined with single spaces.
A paragraph is kept when it is prose: at least `min_words` words (15), at least 60% of them purely alphabetic, and
no doctest (`>>>` / `...`) line. Paragraphs found in more than one group are dropped, duplicates within a group
kept once; then each group's paragraphs are put in the dataset's fixed order (`SPLIT_SEED`) and at most `per_class`
kept, so every module of a group can contribute. The text is not in the demo base's pretraining corpus (`pydoc`
is the language reference; these are the library's docstrings).
"""

from __future__ import annotations

import ast
import re
import sysconfig
from pathlib import Path

from qlbench.data.example import Example, exclusive, shuffled
from qlbench.errors import QlbenchError

# area -> stdlib modules (files) and packages (folders), relative to the stdlib folder. Two more areas were tried
# and left out: files (os, shutil, pathlib, ...) and formats (json, xml, csv, ...) -- with them the demo base's
# classifier reached 39% held-out over 6 classes (15+ words a text); with these four, 53% (config.yaml says why the
# study takes 8+ words).
GROUPS: dict[str, tuple[str, ...]] = {
    "network": ("socket.py", "ssl.py", "http", "urllib", "email", "smtplib.py", "ftplib.py", "imaplib.py",
                "poplib.py", "mailbox.py", "xmlrpc", "socketserver.py"),
    "concurrency": ("threading.py", "multiprocessing", "asyncio", "concurrent", "queue.py", "sched.py",
                    "subprocess.py", "selectors.py"),
    "debugging": ("unittest", "doctest.py", "pdb.py", "bdb.py", "trace.py", "profile.py", "cProfile.py",
                  "pstats.py", "timeit.py", "inspect.py", "dis.py", "traceback.py"),
    "numbers": ("_pydecimal.py", "fractions.py", "statistics.py", "random.py", "datetime.py", "calendar.py",
                "numbers.py"),
}
MIN_WORDS = 15
MIN_ALPHA = 0.6  # the share of purely alphabetic words a prose paragraph has at least


def stdlib() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def groups(spec: dict) -> dict[str, tuple[str, ...]]:
    """The dataset entry's groups (`groups:` a mapping area -> modules), else the default four, in their order."""
    chosen = spec.get("groups") or GROUPS
    return {str(k): tuple(v) for k, v in chosen.items()}


def module_files(entry: str, root: Path) -> list[Path]:
    path = root / entry
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*.py") if not {"test", "tests"} & set(p.relative_to(root).parts))
    raise QlbenchError(f"docstrings: no stdlib module {entry!r} under {root}")


def paragraphs(source: str, min_words: int = MIN_WORDS) -> list[str]:
    """The prose paragraphs of a module's docstrings (module, classes, functions), in the order `ast.walk` meets
    them."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc = ast.get_docstring(node)
        for block in re.split(r"\n\s*\n", doc or ""):
            lines = [line.strip() for line in block.splitlines()]
            if any(line.startswith((">>>", "...")) for line in lines):
                continue
            words = " ".join(lines).split()
            if len(words) >= min_words and sum(w.isalpha() for w in words) >= MIN_ALPHA * len(words):
                out.append(" ".join(words))
    return out


def examples(spec: dict) -> list[Example]:
    """Every kept paragraph, labelled with its group (see the module's docstring)."""
    root = stdlib()
    min_words = spec.get("min_words", MIN_WORDS)
    by_group: dict[str, list[str]] = {}
    for group, entries in groups(spec).items():
        texts = []
        for entry in entries:
            for path in module_files(entry, root):
                texts += paragraphs(path.read_text(encoding="utf-8"), min_words)
        by_group[group] = list(dict.fromkeys(texts))
    cap = spec.get("per_class") or None
    out = []
    for group, texts in exclusive(by_group).items():
        mine = shuffled([Example(t, group) for t in texts])
        if not mine:
            raise QlbenchError(f"docstrings: group {group!r} has no paragraph of {min_words}+ words")
        out += mine[:cap]
    return out
