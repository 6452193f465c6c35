"""The generated tables of the docs: every study setting (from the settings tree, qlbench/study/settings.py, with
the backends and tasks the registry finds) and every output column (from the parquet schemas in qlbench/results.py). `python docs/gen_settings.py [settings|outputs]` prints them; docs/hooks.py puts them into
the site when mkdocs builds it.
"""

from __future__ import annotations

import inspect
import re
import sys

from qlbench import results
from qlbench.study import config

AXES = {  # what each axis of the grid is (the schema describes settings; these are the grid's own)
    "models": "model entries (`models:`) to fine-tune", "bits": "widths of the masked layers (16: not quantized)",
    "ranks": "LoRA ranks", "masks": "which layers get `bits` (see [your own study](own-study.md#masks))",
    "seeds": "seeds: each repeats the cell with other batches and initial weights",
}
_COMMENT = re.compile(r'^\s*"(\w+)":.*?#\s*(.+)$')


def _comments(module) -> dict[str, str]:
    """`"key": value,  # why` lines of a module's source: the comment of each key."""
    found = {}
    for line in inspect.getsource(module).splitlines():
        m = _COMMENT.match(line)
        if m:
            found.setdefault(m.group(1), m.group(2).strip())
    return found


def _allowed(prop: dict, defs: dict) -> str:
    """A schema property's values in a few words."""
    if "$ref" in prop:
        return _allowed(defs[prop["$ref"].split("/")[-1]], defs)
    if "enum" in prop:
        return " | ".join(f"`{v}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{prop['const']}`"
    for key in ("oneOf", "anyOf"):
        if key in prop:
            return " or ".join(_allowed(p, defs) for p in prop[key])
    kind = prop.get("type", "")
    if isinstance(kind, list):  # {"type": ["boolean", "null"]}: one of several
        kind = " or ".join(kind)
    if kind == "array" and "items" in prop:
        return f"list of {_allowed(prop['items'], defs)}"
    bounds = [f"≥ {prop['minimum']}" if "minimum" in prop else "", f"≤ {prop['maximum']}" if "maximum" in prop else "",
              f"> {prop['exclusiveMinimum']}" if "exclusiveMinimum" in prop else ""]
    return " ".join([kind] + [b for b in bounds if b]).strip()


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(rows: list[tuple], header: tuple) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _entry_table(name: str, schema: dict) -> str:
    defs = schema["$defs"]
    props = defs[name]["properties"]
    required = set(defs[name].get("required", []))
    rows = [(f"`{k}`" + (" (required)" if k in required else ""), _allowed(p, defs), p.get("description", ""))
            for k, p in props.items()]
    return _table(rows, ("key", "values", "what it is"))


def settings_markdown() -> str:
    from qlbench.cli.settings import backends_markdown, default_text
    from qlbench.study import settings as tree

    schema = config.schema()  # config.schema.yaml with the tree's settings in a study's properties
    defs = schema["$defs"]
    study = defs["study"]["properties"]
    axes = [(f"`{k}`", _allowed(study[k], defs), study[k].get("description") or AXES.get(k, "")) for k in config.AXES]
    parts = ["## The grid's axes\n\nEach study names these; every combination is a cell.",
             _table(axes, ("axis", "values", "what it is"))]
    for group, cls in tree.GROUPS.items():
        rows = [(f"`{s.key}`", f"`{default_text(s)}`", _allowed(study[s.key], defs), s.doc)
                for s in tree.SPECS.values() if s.group == group]
        parts += [f"## `{group}`\n\n{' '.join(cls.__doc__.split())} (in a cell: `settings.{group}`)",
                  _table(rows, ("setting", "default", "values", "what it does"))]
    return "\n\n".join(parts + [
        "## The `robustness:` mapping\n\n" + defs["robustness"]["description"],
        _entry_table("robustness", schema),
        "### Its `attack:`\n\n" + defs["attack"]["description"],
        _entry_table("attack", schema),
        backends_markdown(),
        "## A model entry (`models:`)",
        _entry_table("model", schema),
        "## A dataset entry (`datasets:`)",
        _entry_table("dataset", schema),
    ]) + "\n"


def _schema_table(schema: dict, notes: dict) -> str:
    return _table([(f"`{k}`", str(t), notes.get(k, "")) for k, t in schema.items()], ("column", "type", "note"))


def outputs_markdown() -> str:
    notes = _comments(results)
    parts = [
        ("`row.parquet` (one per cell) and `cells.parquet` (every cell's row): coordinates", results.COORDS),
        ("… settings", results.SETTINGS), ("… metrics", results.METRICS),
        ("… optional metrics (rows written before they were added lack them; `merged_eval_<metric>` and "
         "`merged_requant_eval_<metric>` follow the task's `eval_<metric>`)", results.OPTIONAL_METRICS),
        ("… provenance", results.PROVENANCE),
        (f"`curves.parquet` (a row per training step; in `row.parquet` the list column `{results.CURVE}`)",
         results.STEP),
        ("`layers.parquet` (a row per quantized module)", dict(results.LAYERS_SCHEMA)),
        ("The one-pass sensitivity probe (a row per module, reference cells with `probe_bits`)",
         dict(results.PROBE_SCHEMA)),
    ]
    return "\n\n".join(f"### {title}\n\n{_schema_table(schema, notes)}" for title, schema in parts) + "\n"


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "settings"
    print({"settings": settings_markdown, "outputs": outputs_markdown}[which]())
