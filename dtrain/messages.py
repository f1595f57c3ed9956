"""The user-facing wording of failures: one line for an error, the user's own frames for a bug in
their code, a plain sentence for a rank whose peer vanished.

Below every other dtrain module (it imports none of them at module level), so the command line,
preflight and anything else that reports an error can use it without importing each other.
"""

from __future__ import annotations

import os

# How gloo (and NCCL) say that the other end of a collective has gone: its process or its node died.
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "remote process exited")


def user_traceback(exc: BaseException) -> str | None:
    """The traceback of `exc` cut to the frames of the user's own files (not dtrain's, not the standard
    library's or an installed package's), with the exception's last line; None if it has no such frame
    or is one of dtrain's or a recipe's own errors (those say what to do in one line)."""
    import sysconfig
    import traceback
    from pathlib import Path

    if type(exc).__module__.startswith(("dtrain.", "recipes.")):
        return None
    here = Path(__file__).resolve().parent
    ours = (str(here) + os.sep, str(here.parent / "recipes") + os.sep)  # dtrain and its shipped recipes
    libraries = {str(Path(sysconfig.get_paths()[k]).resolve()) + os.sep
                 for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not str(Path(f.filename).resolve()).startswith((*ours, *libraries)) and not f.filename.startswith("<")]
    if not frames:
        return None
    lines = traceback.format_list(frames) + traceback.format_exception_only(type(exc), exc)
    return "".join(lines)


def lost_peer(text: str, env=os.environ) -> str:
    """The line a rank prints when another rank vanished mid-collective: this rank and node, the peer's
    address as the backend gave it; the launcher's (or Slurm's) log names the rank or node that died."""
    import re

    from dtrain.dist import node_name, read_env  # lazy: dtrain.dist imports torch

    rank = read_env(env).rank
    peer = re.search(r"peer \[?([0-9A-Za-z.:-]+?)\]?:(\d+)", text)
    at = f" (at {peer.group(1)}:{peer.group(2)})" if peer else ""
    return (f"rank {rank} on {node_name(env)} lost its connection to another rank{at}: that rank's process or "
            "its node has gone, and the launcher's or Slurm's log says which. Run the same command (or let "
            "Slurm requeue the job) to continue from the newest complete checkpoint")


def plain(exc: BaseException) -> str:
    """One line for the user. dtrain's own errors already say what is wrong and what to do; a system
    error is said in words, with the file; anything else is unexpected, and --debug shows where."""
    text = str(exc)
    if text.startswith("Caught ") and "DataLoader worker process" in text.split("\n", 1)[0]:
        # Re-raised by the DataLoader as the same class, with the worker's whole traceback as its message:
        # the original message is its last line, after the class name.
        last = text.rstrip().splitlines()[-1]
        name = f"{type(exc).__module__}.{type(exc).__qualname__}: "
        text = last[len(name):] if last.startswith(name) else last.split(": ", 1)[-1]
    if type(exc).__module__.startswith(("dtrain.", "recipes.")):
        return text
    if any(sign in text for sign in PEER_LOST):
        return lost_peer(text)
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror[0].lower()}{exc.strerror[1:]}{where}"
    if isinstance(exc, OSError) and text:  # raised with a message of its own: that says it
        return text
    text = text.strip() or "no message"
    return f"{text} (unexpected; rerun with `dtrain --debug ...` for where it happened, and report it)"
