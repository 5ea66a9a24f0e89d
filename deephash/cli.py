"""Shared entry-point plumbing: turn user errors into one line on stderr and exit status 2.

Argparse mains are decorated with :func:`exit_on_user_error`; Hydra mains call :func:`run_hydra_task` and are
wrapped (outside ``@hydra.main``) in :func:`check_overrides`, which refuses an override Hydra cannot apply
(``data=foo``, ``model.foo=1``) with one line before Hydra composes anything.
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from omegaconf import DictConfig, OmegaConf

from deephash.utils.errors import DeephashError
from deephash.utils.signals import handle_signals, interruption_status

T = TypeVar("T")

# an OSError with one of these is the user's environment (a full disk, a read-only or foreign directory),
# not a bug: one line names the file
ENVIRONMENT_ERRNOS = (
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOTDIR,
    errno.EEXIST,
)
# a path whose parent is a regular file (ENOTDIR), or a directory to make where a file is (EEXIST)
_PATH_ERRNOS = (errno.ENOTDIR, errno.EEXIST)
INTERRUPTED_STATUS = 130  # the shell's status for a process stopped by SIGINT (143: SIGTERM)


def user_error(err: BaseException) -> DeephashError | OSError | None:
    """The one-line user error behind ``err``, or None for a bug.

    Hydra wraps an error raised in a ``_target_``'s constructor in an ``InstantiationException`` ("Error in
    call to target ..."): the DeephashError is its cause. An OSError of a full disk or a denied write counts
    too."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, DeephashError):
            return err
        if isinstance(err, OSError) and err.errno in ENVIRONMENT_ERRNOS:
            return err
        err = err.__cause__
    return None


def one_line(err: BaseException) -> str:
    """The message of a user error on one line.

    A DataLoader worker's error reaches the main process as the same class with the worker's traceback in its
    message ("Caught DataError in DataLoader worker process 0. Original Traceback ..."): only its last line,
    the original message, is kept."""
    if isinstance(err, OSError) and not isinstance(err, DeephashError):
        where = f" {err.filename}" if err.filename else ""
        if err.errno in _PATH_ERRNOS:
            return (
                f"cannot create{where}: {err.strerror or err} (a file stands where the path needs a directory); "
                "choose another output path"
            )
        return f"cannot write{where}: {err.strerror or err} (free some space or choose a writable directory)"
    text = str(err)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        prefix = f"{type(err).__name__}: "
        text = last.split(prefix, 1)[1] if prefix in last else last
    return " ".join(text.split())


def package_version() -> str:
    """The installed distribution's version (pyproject.toml's), without importing the package root."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("deephash")
    except PackageNotFoundError:
        return "unknown (not installed)"


def accepts_version(prog: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """For every main, outermost: ``--version`` prints ``<prog> (deephash) <version>`` and returns."""

    def decorate(main: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(main)
        def wrapper(*args, **kwargs):
            argv = args[0] if args and isinstance(args[0], list) else kwargs.get("argv")
            if "--version" in (sys.argv[1:] if argv is None else argv):
                print(f"{prog} (deephash) {package_version()}")
                return None
            return main(*args, **kwargs)

        return wrapper

    return decorate


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one ``error: ...`` line (exit status 2) pointing at
    ``--help``, like every other refusal here, instead of the usage block and ``prog: error: ...``.
    Sub-command parsers (``add_subparsers().add_parser``) are of this class too."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def exit_on_user_error(fn: Callable[..., T]) -> Callable[..., T]:
    """For argparse mains: print ``error: <message>`` for a user error and exit 2, without a traceback; Ctrl-C
    or SIGTERM prints ``interrupted`` and exits 130 or 143, as the Hydra entry points do (cleanup in ``finally``
    blocks and atomic writes have run or been rolled back by then). Output piped to a reader that stops early
    (``deephash-search ... | head``) ends the command quietly, as it does ``cat``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with handle_signals():
                result = fn(*args, **kwargs)
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's flush at exit
            return result
        except BrokenPipeError:
            # the pattern of Python's signal documentation: stdout to /dev/null so the flush at exit cannot
            # fail again, and a non-zero status for a pipeline under ``set -o pipefail``
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except Exception as err:
            found = user_error(err)
            if found is None:
                raise
            print(f"error: {one_line(found)}", file=sys.stderr)
            sys.exit(2)
        except BaseException as err:
            status = interruption_status(err)
            if status is None:
                raise
            print("interrupted", file=sys.stderr)
            sys.exit(status)

    return wrapper


def check_overrides(config_name: str) -> Callable[[Callable[[], T]], Callable[[], T]]:
    """For Hydra mains, applied outside ``@hydra.main(config_name=...)``: an override Hydra cannot apply (a
    missing option of a config group, ``data=foo``; a key the config lacks, ``model.lr=0.1``; a malformed
    override) is one ``error:`` line and exit status 2, instead of Hydra's multi-line report and status 1.
    An override of a key that has moved (``model.bits``) is first renamed to its place (``model.net.bits``).
    A multirun whose jobs failed ends with one line naming them (exit status 2), and a SIGTERM or SIGINT
    while Hydra composes ends it like one during a job (143, 130)."""

    def decorate(main: Callable[[], T]) -> Callable[[], T]:
        @functools.wraps(main)
        def wrapper(*args, **kwargs):
            from deephash.config import CONFIG_PATH, rewrite_moved_keys

            sys.argv[1:] = argv = rewrite_moved_keys(sys.argv[1:])
            try:
                with handle_signals():
                    problem = unknown_group_option(argv, Path(CONFIG_PATH)) or composition_error(
                        config_name, argv, CONFIG_PATH
                    )
                    if problem:
                        print(f"error: {problem}", file=sys.stderr)
                        sys.exit(2)
                    SWEEP_JOBS.clear()
                    # the error of a sweep's failed job reaches this wrapper rather than Hydra's traceback
                    os.environ["HYDRA_FULL_ERROR"] = "1"
                    return main(*args, **kwargs)
            except Exception as err:  # a sweep's failed job, or Hydra unable to make the run directory
                found = user_error(err)
                summary = sweep_failure(err) or (one_line(found) if found is not None else None)
                if summary is None:
                    raise
                print(f"error: {summary}", file=sys.stderr)
                sys.exit(2)
            except BaseException as err:  # a signal while Hydra composes or between a sweep's jobs
                status = interruption_status(err)
                if status is None:
                    raise
                print("interrupted", file=sys.stderr)
                sys.exit(status)

        return wrapper

    return decorate


def composition_error(config_name: str, argv: list[str], conf_dir: str) -> str | None:
    """Hydra's refusal to compose ``config_name`` with the overrides of ``argv``, on one line; None if it
    composes (or the command line uses Hydra flags this check leaves to Hydra: ``--cfg``, ``-cn``, ...).

    A sweep (``model.bits=32,64``, ``choice(...)``, ``range(...)``) is composed with its first value; one
    whose values cannot be enumerated (Optuna's ``interval``) is left to the sweeper."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv):
        return None
    overrides = [a for a in argv if not a.startswith("-")]
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and not value.isascii() and value[:1] not in ("'", '"'):
            # Hydra's grammar reads letters beyond ASCII only in quoted values (LexerNoViableAltException)
            return (
                f"the override {override} has characters beyond ASCII, which Hydra reads only in a quoted "
                f"value: pass {key}='\"{value}\"' (the outer quotes are for the shell)"
            )
    try:
        composed = []
        for override in OverridesParser.create().parse_overrides(overrides):
            if not override.is_sweep_override():
                composed.append(override.input_line)
                continue
            try:
                first = next(iter(override.sweep_string_iterator()), None)
            except HydraException:
                first = None
            if first is not None and re.fullmatch(r"[\w./+-]*", first):
                composed.append(f"{override.get_key_element()}={first}")
        with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
            compose(config_name, overrides=composed, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        return _hydra_message(err)
    return None


def _hydra_message(err: BaseException) -> str:
    """Hydra's multi-line report of a composition error on one line: the search path, OmegaConf's
    ``full_key``/``object_type`` lines and the link to the grammar are left out, a list of options is
    joined with commas, and the cause (``Key 'foo' is not in struct``) follows in parentheses."""

    def lines(text: str) -> list[str]:
        kept = []
        for line in (part.strip() for part in text.splitlines()):
            if line.startswith("Config search path"):
                break
            if line and not line.startswith(("full_key:", "object_type=", "See https://")):
                kept.append(line)
        return kept

    parts: list[str] = []
    listing = False  # "Available options in 'model':", then one option per line
    for line in lines(str(err)):
        if listing and " " not in line:
            parts[-1] += (" " if parts[-1].endswith(":") else ", ") + line
        else:
            parts.append(line)
            listing = line.endswith(":")
    text = " ".join(parts)
    override = getattr(err, "override", None)  # OverrideParseException: not always in its message
    if isinstance(override, str) and override not in text:
        text = f"Error parsing override '{override}': {text} (key=value expected)"
    cause = lines(str(err.__cause__)) if err.__cause__ is not None else []
    return f"{text} ({cause[0]})" if cause else text


def unknown_group_option(overrides: list[str], conf_dir: Path) -> str | None:
    """The message for the first override of ``overrides`` that names a missing group option, or None."""
    for override in overrides:
        if override.startswith("-") or "=" not in override:
            continue
        key, value = override.split("=", 1)
        group = key.lstrip("+~").split("@", 1)[0]
        folder = conf_dir / group
        if (
            not group
            or group.startswith("hydra")
            or not folder.is_dir()
            or any(c in value for c in "()[]{}$")
        ):
            continue  # a plain value, a sweep function, or Hydra's own groups (it ships options of them)
        choices = sorted(p.stem for p in folder.glob("*.yaml"))
        for option in value.split(","):
            option = option.strip()
            if option and option.lower() not in ("null", "none") and option not in choices:
                return (
                    f"Could not find '{group}/{option}': {group}={option} is not an option of {group}; "
                    f"expected one of: {', '.join(choices)}"
                )
    return None


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


# the jobs of a multirun that ran in this process: (job number, its overrides, None or its error on one line)
SWEEP_JOBS: list[tuple[int, str, str | None]] = []


def _sweep_job(err: BaseException | None) -> None:
    from hydra.core.hydra_config import HydraConfig

    job = HydraConfig.get().job
    overrides = " ".join(HydraConfig.get().overrides.task)
    message = None
    if err is not None:
        found = user_error(err) if isinstance(err, Exception) else None
        message = (
            one_line(found) if found is not None else f"{type(err).__name__}: {' '.join(str(err).split())}"
        )
    SWEEP_JOBS.append((int(job.num), overrides, message))


def sweep_failure(err: BaseException) -> str | None:
    """The one line that ends a multirun in which jobs failed (Hydra's sweeper raises the first failed job's
    error once every job has run), or None if ``err`` does not end one."""
    failed = [(num, overrides, message) for num, overrides, message in SWEEP_JOBS if message is not None]
    if not failed:
        return None
    num, overrides, message = failed[0]
    more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
    return (
        f"{len(failed)} of the sweep's {len(SWEEP_JOBS)} jobs failed; job {num} ({overrides or 'no overrides'}): "
        f"{message}{more}; each job's metrics.json records how it ended"
    )


def run_hydra_task(
    task: Callable[[DictConfig], dict[str, Any]],
    cfg: DictConfig,
    *,
    on_failure: Callable[[DictConfig, BaseException], None] | None = None,
    report: Callable[[dict[str, Any]], None] | None = None,
) -> float | None:
    """The body of every Hydra main: check the whole composed config, run ``task(cfg)``, ``report`` its
    result (the metrics table by default) and return the scalar a sweeper optimises
    (``cfg.optimized_metric``, a dotted key).

    On failure ``on_failure`` records it (an interrupted run as interrupted); a user error then exits 2 with
    one line, a SIGTERM or SIGINT with status 143 or 130 (in a multirun too: the sweep stops). In a multirun
    another failure propagates instead, so Hydra's launcher marks only this job failed and goes on with the
    others; :func:`check_overrides` then ends the sweep with one line.
    """
    from deephash.config import validate_config
    from deephash.runs import (
        optimized_value,
        previous_run,
        print_config_tree,
        print_summary,
        write_hydra_record,
    )

    with handle_signals():
        try:
            output_dir = OmegaConf.select(cfg, "paths.output_dir", throw_on_resolution_failure=False)
            if output_dir is not None and not previous_run(Path(output_dir)):  # else after claim_run_dir
                write_hydra_record(cfg)
            validate_config(cfg)
            print_config_tree(cfg)  # extras.print_config
            result = task(cfg)
            (report or print_summary)(result)
            value = optimized_value(result, cfg.get("optimized_metric"))
        except BaseException as err:
            if on_failure is not None:
                on_failure(cfg, err)
            status = interruption_status(err)
            if status is not None:
                print("interrupted", file=sys.stderr)
                sys.exit(status)
            if _is_multirun():
                _sweep_job(err)
                raise
            found = user_error(err) if isinstance(err, Exception) else None
            if found is not None:
                print(f"error: {one_line(found)}", file=sys.stderr)
                sys.exit(2)
            raise
    if _is_multirun():
        _sweep_job(None)
    return value
