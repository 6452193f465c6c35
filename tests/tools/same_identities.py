"""Does a change of the config files leave every cell's identity as it was? (Moving, merging or trimming studies must.)

    python tests/tools/same_identities.py [REV]     # REV's config.yaml, studies/ and tests/config.yaml (default HEAD)

Loads both layouts with this checkout's code, REV's from `git archive` and the working tree's as they are, and
compares `cell_identity` of every cell of every study. Exits 1 naming the first differences (a study gone, a cell
whose identity moved); else prints the count. A study only in the working tree is new, not a difference: it is named
and counted apart.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from qlbench.study import config as studylib, grid

REPO = Path(__file__).resolve().parents[2]
FILES = ["config.yaml", "studies", "tests/config.yaml"]


def identities(root: Path) -> dict[str, dict[str, str]]:
    """study -> cell path -> identity hash, for the config files under `root`."""
    config = studylib.read_config([root / f for f in ("config.yaml", "tests/config.yaml") if (root / f).exists()])
    patterns = config.get("study_files", [])
    config["study_files"] = [str(root / p) for p in ([patterns] if isinstance(patterns, str) else patterns)]
    config = studylib.with_studies(config)
    out = {}
    for name in config["studies"]:
        st = studylib.load(config, name)
        out[name] = {cell.path: studylib.cell_identity(st, cell)[1] for cell in grid.cells(st)}
    return out


def at(rev: str, into: Path) -> Path:
    listed = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "--", *FILES], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.split()
    tar = subprocess.run(["git", "archive", rev, *listed], cwd=REPO, check=True, capture_output=True).stdout
    tarfile.open(fileobj=io.BytesIO(tar)).extractall(into)
    return into


def main() -> None:
    rev = sys.argv[1] if len(sys.argv) > 1 else "HEAD"
    with tempfile.TemporaryDirectory() as tmp:
        before = identities(at(rev, Path(tmp)))
    after = identities(REPO)
    problems = [f"study {s}: only in {rev}" for s in before if s not in after]
    new = [s for s in after if s not in before]
    for s in set(before) & set(after):
        problems += [f"{s}/{c}: {before[s].get(c)} -> {after[s].get(c)}"
                     for c in sorted(set(before[s]) | set(after[s])) if before[s].get(c) != after[s].get(c)]
    if problems:
        sys.exit("\n".join(problems[:20]) + (f"\n... {len(problems) - 20} more" if len(problems) > 20 else ""))
    kept = {s: c for s, c in after.items() if s in before}
    print(f"{len(kept)} studies, {sum(map(len, kept.values()))} cells: every identity as in {rev}"
          + (f"; new: {', '.join(new)} ({sum(len(after[s]) for s in new)} cells)" if new else ""))


if __name__ == "__main__":
    main()
