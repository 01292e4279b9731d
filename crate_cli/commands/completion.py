"""`crate completion bash|zsh|fish`: the shell's completion script (click's).

The script calls crate back with `_CRATE_COMPLETE` set; click answers with
the commands, options and choices that fit, and `--org` with the orgs of
the home (file names only: nothing is unlocked to complete a word).
"""

from __future__ import annotations

import click

SHELLS = ("bash", "zsh", "fish")


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the completion script for SHELL.

    \b
    eval "$(crate completion bash)"      # in ~/.bashrc
    eval "$(crate completion zsh)"       # in ~/.zshrc, after compinit
    crate completion fish | source       # in ~/.config/fish/config.fish
    """
    from click.shell_completion import get_completion_class

    from crate_cli.cli import root_command

    shell_class = get_completion_class(shell)
    assert shell_class is not None  # every name in SHELLS is one of click's
    script = shell_class(root_command(), {}, "crate", "_CRATE_COMPLETE").source()
    click.echo(script, nl=not script.endswith("\n"))
