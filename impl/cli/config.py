"""What every ``verisplit`` command shares: settings from flags, environment and a TOML file; the
``--device``/``--dtype``/logging options; the error convention; calibration binding checks.

Precedence of a setting (click's own order): command-line flag > environment variable > ``--config``
file > built-in default.

- Environment: every option of every command has a variable ``VERISPLIT_<COMMAND PATH>_<OPTION>``
  (upper case, ``-`` -> ``_``), e.g. ``VERISPLIT_LEAD_SERVE_HTTP``, ``VERISPLIT_PROVIDER_SERVE_LAYERS``,
  ``VERISPLIT_SERVE_LOCAL_PROVIDERS``; ``--help`` shows each one. Flags take 1/true/yes/on.
- Config file (``--config FILE``, serve commands): TOML with one table per command, ``[lead]`` for
  ``lead serve``, ``[provider]`` for ``provider serve``, ``[serve-local]`` for ``serve-local``; keys
  are option names without the dashes (``data-dir`` or ``data_dir``); relative paths are relative to
  the file's folder; an unknown key is an error (typos do not pass silently).
- Errors: a problem with the environment or the inputs' content is ``click.ClickException`` (``Error:
  ...``, exit 1); a malformed command line is a usage error (exit 2). Verdict commands (``ledger
  verify``, ``verifier audit``) also exit 1 when what they check fails.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Callable

import click

DEVICES_HELP = "auto (CUDA if available, else CPU), cpu, cuda or cuda:N"
DTYPES = ("auto", "float32", "float16", "bfloat16")
DTYPE_HELP = "Compute dtype: auto (float32 on CPU, the checkpoint's dtype on CUDA), float32, float16 or bfloat16."


def env_name(prefix: str, param: click.Parameter) -> str:
    """``VERISPLIT_LEAD_SERVE`` + ``--data-dir`` -> ``VERISPLIT_LEAD_SERVE_DATA_DIR``."""
    longs = [o for o in getattr(param, "opts", []) if o.startswith("--")]
    stem = (longs[0][2:] if longs else str(param.name))
    return f"{prefix}_{stem}".upper().replace("-", "_")


def apply_envvars(command: click.Command, prefix: str) -> click.Command:
    """Give every option of ``command`` (recursively through groups) its environment variable and show
    it in ``--help``; idempotent, explicit ``envvar=`` settings are kept."""
    for param in command.params:
        if isinstance(param, click.Option) and param.envvar is None and param.name not in ("help", "version"):
            param.envvar = env_name(prefix, param)
            param.show_envvar = True
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            apply_envvars(sub, f"{prefix}_{name}".upper().replace("-", "_"))
    return command


def _config_keys(command: click.Command) -> dict[str, click.Option]:
    keys: dict[str, click.Option] = {}
    for param in command.params:
        if isinstance(param, click.Option) and param.name not in ("config", "help"):
            for opt in param.opts:
                if opt.startswith("--"):
                    keys[opt[2:]] = param
    return keys


def load_config_section(path: Path, section: str, command: click.Command) -> dict[str, Any]:
    """The ``[section]`` table of TOML file ``path`` as a click ``default_map`` for ``command``."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise click.BadParameter(f"{path}: no such file", param_hint="--config") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(f"{path}: not a valid TOML file ({exc})", param_hint="--config") from None
    table = data.get(section, {})
    if not isinstance(table, dict):
        raise click.BadParameter(f"{path}: [{section}] must be a table", param_hint="--config")
    keys = _config_keys(command)
    out: dict[str, Any] = {}
    for key, value in table.items():
        param = keys.get(str(key).replace("_", "-"))
        if param is None:
            known = ", ".join(sorted(k for k in keys if k not in ("ready-file",)))
            raise click.BadParameter(f"{path}: [{section}] has no setting {key!r} (known: {known})",
                                     param_hint="--config")
        if isinstance(param.type, click.Path) and isinstance(value, str) and value and not Path(value).is_absolute():
            value = str((path.parent / value).resolve())
        out[str(param.name)] = value
    return out


def config_option(section: str) -> Callable[[Any], Any]:
    """``--config FILE``: read the ``[section]`` table into the command's defaults (before other options)."""

    def callback(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
        if value is not None:
            ctx.default_map = {**(ctx.default_map or {}), **load_config_section(value, section, ctx.command)}
            ctx.meta["verisplit.config"] = value
        return value

    return click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path), default=None,
                        is_eager=True, expose_value=False, callback=callback,
                        help=f"TOML settings file; its [{section}] table sets any option of this command "
                             "(flag > environment > file > default).")


def device_option(help_suffix: str = "") -> Callable[[Any], Any]:
    return click.option("--device", default="auto", show_default=True, callback=_check_device,
                        help=f"Where to compute: {DEVICES_HELP}.{help_suffix}")


def dtype_option() -> Callable[[Any], Any]:
    return click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True, help=DTYPE_HELP)


def _check_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    text = (value or "auto").strip().lower()
    head, _, index = text.partition(":")
    if text in ("auto", "cpu", "cuda") or (head == "cuda" and index.isdigit()):
        return text
    raise click.BadParameter(f"{value!r} is not {DEVICES_HELP}", ctx=ctx, param=param)


def runtime_device(value: str | None) -> str | None:
    """The ``--device`` value as the runtime takes it (None = auto)."""
    return None if value in (None, "", "auto") else value


def runtime_dtype(value: str | None) -> str | None:
    """The ``--dtype`` value as the runtime takes it (None = auto)."""
    return None if value in (None, "", "auto") else value


def log_options(func: Any) -> Any:
    """``--log-format text|json`` and ``-v/--verbose``."""
    func = click.option("-v", "--verbose", is_flag=True, help="Log debug messages too (default: INFO and above).")(func)
    return click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
                        help="Log lines as text or as one JSON object per line (for log collectors).")(func)


def check_calibration(path: Path, model_id: str, dtype: str | None = None, what: str = "--calibration") -> Any:
    """The tolerance in calibration file ``path`` after checking that it was measured for ``model_id``
    (and, when given, ``dtype``); a file for another model or dtype is refused with a clear message."""
    from verisplit.impl.audit.calibrate import CalibrationError, load_tolerance

    try:
        tolerance = load_tolerance(path)
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (CalibrationError, OSError, ValueError) as exc:
        raise click.ClickException(f"{what}: {exc}") from None
    measured_for = doc.get("model_id")
    if measured_for != model_id:
        raise click.ClickException(
            f"{what}: {path} was measured for model {measured_for!r}, but this checkpoint is {model_id!r}; "
            f"a tolerance only holds for the model it was measured on: run `verisplit calibrate --checkpoint "
            f"CHECKPOINT --out FILE` for this model")
    file_dtype = doc.get("dtype", tolerance.dtype)
    if file_dtype != tolerance.dtype:
        raise click.ClickException(f"{what}: {path} is inconsistent: measured in {file_dtype}, tolerance for "
                                   f"{tolerance.dtype}")
    if dtype is not None and dtype != tolerance.dtype:
        raise click.ClickException(f"{what}: {path} was measured in {tolerance.dtype}, but --dtype is {dtype}; "
                                   f"calibrate in {dtype} or drop --dtype")
    return tolerance
