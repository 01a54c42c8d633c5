"""User-facing errors.

A `UserError` is a mistake in what the user gave us (a spec, a data file, a config value).
The command line prints its message alone, without a traceback, and exits with status 2;
`FIDELITY_DEBUG=1` shows the traceback too. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


class UserError(Exception):
    """A problem with the user's input, explained in words the user can act on."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what `timeout`, `kill`, `docker stop` and a batch system's time limit send), raised
    where the process is, so that it stops like Ctrl-C: a run in progress is marked KILLED with the
    reason, a sweep's parent too."""

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        super().__init__(f"signal {signal.Signals(signum).name}")


def raise_terminated(signum, frame):
    """A signal handler: `signal.signal(signal.SIGTERM, raise_terminated)`."""
    raise Terminated(signum)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: where (`key`), and what was expected versus found."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class SpecError(UserError):
    """Every problem found in one study spec, reported together."""

    def __init__(self, origin: str, problems: list[Problem], what: str = "the study spec"):
        self.origin, self.what = origin, what
        self.problems = list(problems)
        n = len(self.problems)
        head = f"{origin}: {n} problem{'s' if n != 1 else ''} in {what}"
        super().__init__(head + "\n" + "\n".join(f"  - {p}" for p in self.problems))

    def __reduce__(self):  # survives pickling (a sweep trial's error travels back from its worker)
        return type(self), (self.origin, self.problems, self.what)


class ConfigError(UserError):
    """A config value that cannot work (`pilot.n` too large, an unknown method, ...)."""

    def __init__(self, key: str, value: object, expected: str, origin: str = "config"):
        self.key, self.value, self.expected, self.origin = key, value, expected, origin
        shown = repr(value)
        shown = shown if len(shown) <= 120 else f"{shown[:100]}...' ({len(str(value))} characters)"
        super().__init__(f"{origin}: {key}={shown}: {expected}")

    def __reduce__(self):
        return type(self), (self.key, self.value, self.expected, self.origin)


class ArmFailed(UserError):
    """An arm's twins cannot be scored (too few, or questions left unanswered): the run stops
    with the reason rather than report numbers about other respondents."""
