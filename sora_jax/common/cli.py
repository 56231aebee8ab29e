"""Running a command-line entry point: a user's mistake ends it with one line, not a dump.

`run(main)` replaces `absl.app.run(main)`. A bad flag, a bad config key or value, a missing
file, a locked workdir, a NaN stop or a failed save prints `error: <what, naming the flag,
key or path>` on stderr and exits with status 2 (usage: flags, config keys and values) or 1
(the run failed); no absl usage dump, no traceback. `--help` is absl's, complete. Set
SORA_JAX_TRACEBACK=1 to get the traceback of such an error too (to debug sora_jax itself);
other exceptions (bugs) always keep theirs.
"""

from __future__ import annotations

import difflib
import inspect
import logging as pylogging
import os
import re
import sys
from collections.abc import Callable

from absl import app, flags, logging

# Errors that come from what the user asked for or from the environment, not from a bug.
USER_ERRORS = (app.UsageError, ValueError, KeyError, OSError, FloatingPointError, RuntimeError)


class UsageError(app.UsageError):
    """A flag or config value is wrong (exit status 2)."""


def one_line(e: BaseException) -> str:
    """The exception's message on one line (KeyError quotes its message: unquoted here)."""
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(str(text).split()) or type(e).__name__


def fail(message: str, status: int = 1):
    """Prints `error: message` on one line to stderr and exits with `status`."""
    sys.stderr.write(f"error: {' '.join(message.split())}\n")
    sys.stderr.flush()
    # os._exit: orbax's and grain's background threads must not print tracebacks at exit.
    os._exit(status)


def _status(e: BaseException) -> int:
    return 2 if isinstance(e, (app.UsageError, flags.Error, KeyError)) else 1


def _suggest(text: str) -> str:
    """`text` plus a 'did you mean' for an unknown flag, when one is close."""
    if "Unknown command line flag" not in text or "did you mean" in text.lower():
        return text
    name = text.split("'")[1] if "'" in text else ""
    close = difflib.get_close_matches(name, list(flags.FLAGS), n=1)
    return f"{text}; did you mean --{close[0]}?" if close else text


def _unknown_key(e: Exception, argv: list[str]) -> str:
    """One line for an unknown `--config.a.b=...` key: ml_collections raises a KeyError or
    AttributeError whose text holds the key and, when one is close, its suggestion."""
    text = str(e).replace("\\n", " ").replace("\\", "")
    m = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
    key = m.group(2) if m else (re.findall(r"'([\w-]+)'", text) or ["?"])[0]
    names = [a.split("=")[0] for a in argv if a.startswith("--")]
    where = next((n for n in names if re.search(rf"\.{re.escape(key)}(\.|$)", n)), None)
    hint = f"; did you mean {m.group(1)!r}?" if m else ""
    return f"{where or '--config'}: no such config key {key!r}{hint}"


def _parse(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(_suggest(one_line(e)), 2)
    except (AttributeError, KeyError) as e:  # config_flags: an unknown config key
        fail(_unknown_key(e, argv), 2)
    except USER_ERRORS as e:
        fail(one_line(e), 2)


def config_value(holder, flag: str = "config"):
    """The value of a config_flags flag; a file that does not load names --config and the
    path (config_flags only says so lazily, at the first use, in a multi-line message)."""
    value = holder.value
    try:
        value.keys()  # a config that failed to load raises here
    except USER_ERRORS + (AttributeError, SyntaxError, ImportError) as e:
        path = flags.FLAGS[flag].config_filename
        reason = one_line(e)
        if "No such file" in reason:
            reason = "no such file"
        raise UsageError(f"--{flag}={path}: cannot load the config ({reason})") from None
    return value


def _is_abandoned_read(unraisable) -> bool:
    """A checkpoint that fails to restore leaves orbax's other shard reads behind: coroutines
    that Python closes when it collects them ('Exception ignored in <coroutine ...>' and a page
    of tensorstore detail) and tensorstore callbacks that find orbax's event loop closed."""
    if inspect.iscoroutine(unraisable.object):
        return True
    e = unraisable.exc_value
    return isinstance(e, RuntimeError) and str(e) == "Event loop is closed"


class _NeverRetrieved(pylogging.Filter):
    """asyncio's 'Task exception was never retrieved' for those abandoned reads: one page of
    tensorstore detail per array; they go to the debug log."""

    def filter(self, record):
        if "exception was never retrieved" not in str(record.msg):
            return True
        logging.debug("abandoned read: %s", " ".join(record.getMessage().split())[:200])
        return False


def _quiet_abandoned_reads() -> None:
    """The failed restore itself is already logged in one line, so what its abandoned reads
    print goes to the debug log; any other unraisable exception keeps Python's report."""
    default_hook = sys.unraisablehook

    def hook(unraisable):
        if _is_abandoned_read(unraisable):
            text = " ".join(str(unraisable.exc_value).split())[:200]
            logging.debug("abandoned %r: %s", unraisable.object, text)
        else:
            default_hook(unraisable)

    sys.unraisablehook = hook
    pylogging.getLogger("asyncio").addFilter(_NeverRetrieved())


def run(main: Callable[[list[str]], int | None], flags_parser: Callable | None = None) -> None:
    """`absl.app.run(main)` whose user errors end with one line (see the module docstring);
    `flags_parser` replaces the default one (its errors must be one line too)."""
    _quiet_abandoned_reads()

    def wrapped(argv):
        try:
            return main(argv)
        except USER_ERRORS as e:
            if os.environ.get("SORA_JAX_TRACEBACK"):
                raise
            fail(one_line(e), _status(e))

    app.run(wrapped, flags_parser=flags_parser or _parse)
