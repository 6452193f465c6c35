"""`qlbench settings`: every setting a study may give (grouped, with type, default and description), and the
backends and tasks the registry finds — all from their one source (`qlbench.study.settings`, `qlbench.registry`)."""

from __future__ import annotations

import json

import click

from qlbench.cli.group import main


def default_text(spec) -> str:
    from qlbench.study.settings import REQUIRED, thawed

    if spec.default is REQUIRED:
        return "(required)"
    if spec.optional:
        return "(unset)"
    return json.dumps(thawed(spec.default))


def text_reference() -> str:
    from qlbench import registry
    from qlbench.study.settings import SPECS, GROUPS

    lines = []
    for group, cls in GROUPS.items():
        lines.append(f"{group}: {' '.join(cls.__doc__.split())}")
        for spec in (s for s in SPECS.values() if s.group == group):
            lines.append(f"  {spec.key:<17} {spec.type:<20} {default_text(spec):<10} {spec.doc}")
        lines.append("")
    lines.append("backends:")
    for b in registry.backends().values():
        widths = "; ".join(f"{f} {','.join(map(str, w))}" for f, w in b.widths.items() if w)
        lines.append(f"  {b.name:<17} {b.summary} ({widths}{'; re-quantizes in place' if b.requantizes else ''})")
        if b.deploys:  # a serving format: what `deploy: NAME:PRESET` may name
            lines.append(f"  {'':<17} deploy presets: {', '.join(b.deploys)}")
    lines.append("tasks:")
    lines += [f"  {t.name:<17} {t.summary}" for t in registry.tasks().values()]
    return "\n".join(lines)


def backends_markdown() -> str:
    """The backends and tasks, as the docs' tables."""
    from qlbench import registry

    out = ["## Backends", "", "| backend | what | formats and widths | re-quantizes in place |",
           "| --- | --- | --- | --- |"]
    for b in registry.backends().values():
        widths = "; ".join(f"{f}: {', '.join(map(str, w))}" for f, w in b.widths.items() if w)
        out.append(f"| `{b.name}` | {b.summary} | {widths} | {'yes' if b.requantizes else 'no'} |")
    out += ["", "## Tasks", "", "| task | what |", "| --- | --- |"]
    out += [f"| `{t.name}` | {t.summary} |" for t in registry.tasks().values()]
    return "\n".join(out)


@main.command()
def settings():
    """Every setting a study may give (grouped: type, default, description), and the backends and tasks there are.
    The docs' settings page is the same, as tables (docs/gen_settings.py)."""
    click.echo(text_reference())


def run_epilog() -> str:
    """The settings `qlbench run --set KEY=VALUE` takes, one line per group (`qlbench settings` describes each)."""
    from qlbench.study.settings import SPECS, GROUPS

    lines = ["\b", "Settings for --set KEY=VALUE (`qlbench settings` describes each):"]
    lines += [f"  {g}: {', '.join(s.key for s in SPECS.values() if s.group == g)}" for g in GROUPS]
    return "\n".join(lines)
