"""`boxui demo`: the app over sample machines, in the foreground.

The app is imported inside the command: every `boxui` invocation imports this module,
and `boxui ls` must not pay for Textual. (`boxui daemon` lives in `daemon_cmds`.)
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Demo state dir (default: next to the normal one, named *-demo); "
              "wiped at start if made by an earlier demo.")
@click.option("--script", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="Act out this lifecycle script (TOML; see the README).")
@click.option("--real", is_flag=True,
              help="With --script: on real QEMU machines, not stand-in processes.")
@click.option("--record", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the session's events to this file (JSON lines) for --replay.")
@click.option("--replay", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="Play a recording back into the app (nothing runs).")
@click.option("--speed", type=float, default=1.0, show_default=True,
              help="Play the story, script or recording this many times faster.")
def demo_cmd(home: Path | None, script: Path | None, real: bool, record: Path | None,
             replay: Path | None, speed: float) -> None:
    """Open the app over sample machines that show every state (no VMs involved), act
    out a script, or record a session and play it back."""
    if speed <= 0:
        raise click.UsageError(f"--speed must be more than 0, not {speed:g}")
    if real and script is None:
        raise click.UsageError("--real goes with --script (the built-in story is stand-ins)")
    if replay is not None:
        if script is not None or real or record is not None or home is not None:
            raise click.UsageError("--replay plays a recording back; it takes only --speed")
        from boxui.tui.replay_app import run_replay

        run_replay(replay, speed)
        return
    from boxui.tui.demo_modes import run_demo_mode

    run_demo_mode(home, script=script, real=real, record=record, speed=speed)


COMMANDS = [demo_cmd]
