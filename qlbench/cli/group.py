"""The `qlbench` group and the options its commands share (the commands import these; the package imports them)."""

from __future__ import annotations

import click

from qlbench.errors import QlbenchError

CONFIG_HELP = "config file(s); later ones override earlier ones"


def config_option(f):
    return click.option("--config", "-c", "config_files", multiple=True, default=["config.yaml"],
                        show_default=True, type=click.Path(dir_okay=False), help=CONFIG_HELP)(f)


def load_study(config_files, study_name):
    from qlbench.study import config as study

    return study.load(study.read_config(config_files), study_name)


ARGV: list[str] = []  # the arguments of this invocation, as given (`run --warm` forwards them to a warm process)


class _Group(click.Group):
    """Turns a QlbenchError anywhere into one line and exit code 1."""

    def main(self, args=None, *rest, **kwargs):
        import sys

        ARGV[:] = sys.argv[1:] if args is None else list(args)
        return super().main(args, *rest, **kwargs)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except QlbenchError as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=_Group)
@click.version_option(package_name="qlbench")
def main():
    """qlbench: does quantizing the model during LoRA fine-tuning cost quality, where, and how many bits are enough?

    A study (config.yaml) is a grid of cells over model x bits x rank x layer-mask x seed. Snakemake runs the grid
    (`snakemake --profile profiles/local`); these commands run one cell, prepare a base, and aggregate results.
    """
