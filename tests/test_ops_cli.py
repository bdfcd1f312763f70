"""Operator-facing CLI conventions (issue 20): every option of every command has help text, one
error style, settings from flag > environment > config file > default, calibration bound to its model."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from verisplit.cli import main
from verisplit.impl.cli.config import apply_envvars, config_option, env_name

SERVE_COMMANDS = (("lead", "serve"), ("provider", "serve"), ("serve-local",))


def walk(command: click.Command, path: tuple[str, ...], ctx: click.Context):
    yield path, command
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, f"{' '.join(path + (name,))} cannot be loaded"
            yield from walk(sub, path + (name,), click.Context(sub, parent=ctx, info_name=name))


def all_commands():
    return list(walk(main, ("verisplit",), click.Context(main, info_name="verisplit")))


def test_every_command_and_option_has_help_text():
    runner = CliRunner()
    missing = []
    commands = all_commands()
    assert len(commands) > 25
    for path, command in commands:
        result = runner.invoke(main, [*path[1:], "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output
        if not (command.help or command.short_help):
            missing.append(" ".join(path))
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip():
                missing.append(f"{' '.join(path)} {'/'.join(param.opts)}")
    assert missing == [], f"without help text: {missing}"


def test_every_option_names_its_environment_variable():
    for path, command in all_commands():
        for param in command.params:
            if isinstance(param, click.Option) and param.name not in ("help", "version"):
                assert param.envvar, (path, param.opts)
                assert str(param.envvar).startswith("VERISPLIT_"), (path, param.envvar)
    result = CliRunner().invoke(main, ["lead", "serve", "--help"])
    assert "VERISPLIT_LEAD_SERVE_HTTP" in result.output and "VERISPLIT_LEAD_SERVE_DATA_DIR" in result.output


@pytest.mark.parametrize("path", SERVE_COMMANDS)
def test_serve_commands_share_device_logging_and_config_options(path):
    command = dict((p[1:], c) for p, c in all_commands())[path]
    names = {p.name for p in command.params}
    assert {"log_format", "verbose", "shutdown_grace"} <= names
    assert any("--config" in p.opts for p in command.params)
    if path != ("lead", "serve"):
        device = next(p for p in command.params if p.name == "device")
        dtype = next(p for p in command.params if p.name == "dtype")
        assert device.default == "auto" and dtype.default == "auto"


def test_device_and_dtype_have_one_default_everywhere():
    seen = set()
    for path, command in all_commands():
        if path[1:2] in (("conform",), ("model",)):  # conform: the test harness's own choice; model: storage dtype
            continue
        for param in command.params:
            if param.name in ("device", "dtype"):
                seen.add((param.name, param.default, (param.help or "").split(".")[0]))
    assert {(n, d) for n, d, _ in seen} == {("device", "auto"), ("dtype", "auto")}, seen
    assert len(seen) == 2, "one help text per option"


def test_errors_have_one_style(tmp_path):
    runner = CliRunner()
    # a problem with the inputs' content: "Error: ..." and exit 1
    result = runner.invoke(main, ["ledger", "show", "--ledger", str(tmp_path / "nope.db")])
    assert result.exit_code == 1 and "Error:" in result.output and "Traceback" not in result.output
    result = runner.invoke(main, ["verifier", "audit", "--checkpoint", str(tmp_path), "--data-dir", str(tmp_path),
                                  "--request", "x", "--atol", "1"])
    assert result.exit_code == 1 and "Error:" in result.output
    # a malformed command line: usage error, exit 2
    result = runner.invoke(main, ["ledger", "verify", "--ledger", str(tmp_path / "x.db"), "--lead-public-key", "zz"])
    assert result.exit_code == 2 and "--lead-public-key" in result.output
    result = runner.invoke(main, ["provider", "serve", "--checkpoint", str(tmp_path), "--key", "k", "--layers", "4:2"])
    assert result.exit_code == 2 and "--layers" in result.output
    result = runner.invoke(main, ["provider", "serve", "--checkpoint", str(tmp_path), "--key", "k", "--layers", "auto:0"])
    assert result.exit_code == 2 and "auto:N" in result.output


def _probe_command():
    @click.command("probe")
    @config_option("probe")
    @click.option("--port", default=1, show_default=True, type=int, help="p")
    @click.option("--name", default="default", help="n")
    @click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="d")
    @click.option("--flag", is_flag=True, help="f")
    def probe(port: int, name: str, data_dir: Path | None, flag: bool) -> None:
        click.echo(json.dumps({"port": port, "name": name, "data_dir": str(data_dir), "flag": flag}))

    return apply_envvars(probe, "VERISPLIT_PROBE")


def test_precedence_flag_over_env_over_file_over_default(tmp_path):
    probe = _probe_command()
    runner = CliRunner()
    config = tmp_path / "conf" / "verisplit.toml"
    config.parent.mkdir()
    config.write_text('[probe]\nport = 3\nname = "file"\ndata-dir = "rel/data"\nflag = true\n[other]\nx = 1\n')
    run = lambda args, env=None: json.loads(runner.invoke(probe, args, env=env or {}).output)  # noqa: E731
    assert run([]) == {"port": 1, "name": "default", "data_dir": "None", "flag": False}
    assert run(["--config", str(config)]) == {"port": 3, "name": "file", "flag": True,
                                              "data_dir": str(config.parent / "rel" / "data")}
    assert run(["--config", str(config)], {"VERISPLIT_PROBE_PORT": "4"})["port"] == 4
    assert run(["--config", str(config), "--port", "5"], {"VERISPLIT_PROBE_PORT": "4"})["port"] == 5
    assert run([], {"VERISPLIT_PROBE_CONFIG": str(config)})["name"] == "file"  # --config itself from the env
    config.write_text("[probe]\nprot = 3\n")
    result = runner.invoke(probe, ["--config", str(config)])
    assert result.exit_code == 2 and "'prot'" in result.output and "port" in result.output
    config.write_text("[probe\n")
    result = runner.invoke(probe, ["--config", str(config)])
    assert result.exit_code == 2 and "not a valid TOML" in result.output


def test_env_names():
    opt = click.Option(["--kv-budget-mb", "kv"])
    assert env_name("VERISPLIT_PROVIDER_SERVE", opt) == "VERISPLIT_PROVIDER_SERVE_KV_BUDGET_MB"


def test_calibration_is_bound_to_its_model(tmp_path):
    from verisplit.impl.cli.config import check_calibration

    doc = {"format": "verisplit-calibration", "version": 1, "model_id": "model-a", "dtype": "float32",
           "tolerance": {"dtype": "float32", "atol": 1e-5, "rtol": 1e-5}}
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(doc))
    assert check_calibration(path, "model-a").dtype == "float32"
    with pytest.raises(click.ClickException, match="measured for model 'model-a', but this checkpoint is 'model-b'"):
        check_calibration(path, "model-b")
    with pytest.raises(click.ClickException, match="measured in float32, but --dtype is bfloat16"):
        check_calibration(path, "model-a", "bfloat16")
    path.write_text(json.dumps(doc | {"dtype": "bfloat16"}))
    with pytest.raises(click.ClickException, match="inconsistent"):
        check_calibration(path, "model-a")


def test_lead_refuses_a_calibration_for_another_model_before_writing_anything(tmp_path):
    from verisplit.impl.runtime.checkpoint import make_random_checkpoint

    checkpoint = make_random_checkpoint(tmp_path / "ckpt", layers=2, hidden=32, heads=2, kv_heads=1, vocab=512,
                                        max_position=64, seed=1)
    calibration = tmp_path / "cal.json"
    calibration.write_text(json.dumps({"format": "verisplit-calibration", "version": 1, "model_id": "another-model",
                                       "dtype": "float32",
                                       "tolerance": {"dtype": "float32", "atol": 1e-5, "rtol": 1e-5}}))
    data = tmp_path / "lead-data"
    result = CliRunner().invoke(main, ["lead", "serve", "--checkpoint", str(checkpoint), "--data-dir", str(data),
                                       "--calibration", str(calibration), "--listen", "127.0.0.1:0", "--http",
                                       "127.0.0.1:0"])
    assert result.exit_code == 1 and "measured for model 'another-model'" in result.output
    assert not data.exists()
