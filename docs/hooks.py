"""mkdocs hook: fills the generated tables of the settings and outputs pages when the site is built."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("gen_settings", Path(__file__).with_name("gen_settings.py"))
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)

MARKERS = {"<!-- qlbench:settings -->": gen.settings_markdown, "<!-- qlbench:outputs -->": gen.outputs_markdown}


def on_page_markdown(markdown, page, config, files):
    for marker, make in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
