"""The fresh-key cheater against probation and the vesting escrow, on real processes (issue 11).

One lead (audits at p, probation M requests, escrow window V), an honest provider on each half of a
small random 4-layer model (price 10), and a cheater on the upper half at price 5, so the router
sends it every request while it is listed. The cheater re-joins under a fresh key (and provider id)
within a heartbeat of every ban: one process loops ``cheatkit.serve``'s behaviour through
``provider serve`` lives, each with a newly generated key. Before each request the bench waits (up to
``--rejoin-timeout`` s) for a cheater to be listed, the adversary's best case.

Scenarios (``--scenarios``):
- ``baseline``: M = 0, V = 0 (what the lead did before issue 11), a ``skip_layer`` cheater;
- ``naive``: the configured M and V, the same ``skip_layer`` cheater (caught at its first request);
- ``patient``: the configured M and V, a cheater honest for its key's first M requests, then
  ``skip_layer`` (``PatientSkipLayer``): the best strategy against probation.

Cost model (``verisplit.spec.escrow``, ASSUMED ``savings_within_value``): serving work of value
v = price x work costs the provider ``kappa * v`` for each ``kappa`` of ``--cost-fractions`` (1: the
bound the spec assumes, cost = value; 1/2: a 50% margin); ``skip_layer`` on a 2-layer segment saves
``savings_fraction("skip_layer", 2) = 1/2`` of it. The cheater's **net gain** = vested payouts
received minus the compute cost it actually spent (honest requests at full cost, cheated ones at
half); **per request** = over the requests its keys served. An honest provider's net gain per request
at the same price is ``(1 - kappa) * v``; cheating pays iff the cheater's figure is above it. Everything is read back from the signed ledger (payouts,
held, vested, forfeited per key) after ``ledger verify`` passed.

Usage:
    python bench/franchise.py [--requests 200] [--p 1/10] [--probation 20] [--window 10] [--docs]
Child processes (started by the bench and by tests/test_franchise_net.py):
    python bench/franchise.py sybil MODE --key-dir DIR --id-prefix NAME PROVIDER_SERVE_OPTIONS...
The ``lead`` launcher is ``verisplit lead serve`` with the audit service given probation and window
(until ``lead serve`` takes them as flags).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

from verisplit.impl.node.behaviour import Behaviour

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
TESTS_DIR = ROOT / "tests"
HONEST_PRICE = 10
CHEAT_PRICE = 5
LAYERS = 4
UPPER = "2:4"
HONEST_REQUESTS_ENV = "VERISPLIT_BENCH_HONEST_REQUESTS"
CHEAT_LOG_ENV = "VERISPLIT_BENCH_CHEAT_LOG"


# ---- child processes ----------------------------------------------------------------------------------

class PatientSkipLayer(Behaviour):
    """Honest for the first ``$VERISPLIT_BENCH_HONEST_REQUESTS`` sessions of its key (its probation),
    then skips the first layer of its range (``skip_layer``) on every later session. Each session's
    choice is appended to ``$VERISPLIT_BENCH_CHEAT_LOG`` (JSON lines) for the cost model."""

    name = "patient_skip_layer"

    def __init__(self) -> None:
        self.honest_requests = int(os.environ.get(HONEST_REQUESTS_ENV, "20"))
        self.sessions = 0
        self.log = os.environ.get(CHEAT_LOG_ENV)

    def prepare(self, segment: Any) -> None:
        full = list(segment.layer_indices)
        skipped = [i for i in full if i != full[0]]
        original = segment.open_session

        def open_session(session_id: str, max_length: int) -> None:
            self.sessions += 1
            cheat = self.sessions > self.honest_requests
            segment.layer_indices = list(skipped if cheat else full)
            if self.log:
                with open(self.log, "a", encoding="utf-8") as out:
                    out.write(json.dumps({"session": session_id, "cheat": cheat, "pid": os.getpid()}) + "\n")
            original(session_id, max_length)

        segment.open_session = open_session


def sybil_main(argv: list[str]) -> None:
    """A cheater that re-joins under a fresh key after every ban: one ``provider serve`` life per key."""
    parser = argparse.ArgumentParser(prog="franchise.py sybil")
    parser.add_argument("mode")
    parser.add_argument("--key-dir", required=True, type=Path)
    parser.add_argument("--id-prefix", required=True)
    known, rest = parser.parse_known_args(argv)
    sys.path[:0] = [str(TESTS_DIR), str(BENCH_DIR)]
    import click

    from cheatkit.serve import load_behaviour
    from verisplit.impl.cli.net import provider_serve
    from verisplit.impl.records.keys import create_key_file

    known.key_dir.mkdir(parents=True, exist_ok=True)
    life = 0
    while True:
        life += 1
        key = known.key_dir / f"{known.id_prefix}-{life}.key"
        create_key_file(key)
        behaviour = load_behaviour(known.mode)
        args = [*rest, "--key", str(key), "--provider-id", f"{known.id_prefix}-{life}"]
        try:
            provider_serve.main(args=args, prog_name="franchise.py sybil", obj=behaviour, standalone_mode=False)
        except click.ClickException as exc:  # refused: banned (or the lead is gone)
            print(f"life {life} ended: {exc.format_message()}", flush=True)
            if "banned" not in exc.format_message():
                raise SystemExit(1) from None
            continue
        return  # stopped by a signal


# ---- the benchmark -------------------------------------------------------------------------------------

def _listed(client: Any, prefix: str) -> list[str]:
    try:
        data = client.get("/v1/providers").json()["data"]
    except Exception:  # noqa: BLE001 - the lead is busy; try again
        return []
    return [p["provider_id"] for p in data if p["provider_id"].startswith(prefix)]


def _request(client: Any, prompt: list[int], max_tokens: int, timeout: float = 120.0) -> dict[str, Any]:
    response = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
    request_id = response.headers["x-verisplit-request-id"]
    deadline = time.monotonic() + timeout
    while True:
        info = client.get(f"/v1/requests/{request_id}").json()
        if "settlement" in info and not info.get("pending_hooks"):
            return dict(info, status_code=response.status_code)
        if time.monotonic() > deadline:
            raise RuntimeError(f"audit hook of {request_id} did not finish: {info}")
        time.sleep(0.02)


def start_net(root: Path, group: Any, checkpoint: Path, calibration: Path, *, p: Fraction, probation: int,
              window: int, mode: str, honest_requests: int, heartbeat: float = 0.2) -> dict[str, Any]:
    """Lead (franchise launcher), two honest providers and the re-joining cheater; returns endpoints."""
    import cheatkit
    from verisplit.impl.node.procs import free_port, verisplit_command
    from verisplit.impl.records.keys import create_key_file

    keys = root / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    (root / "seed.hex").write_text("5e" * 32 + "\n", encoding="utf-8")
    grpc_addr, http_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    lead = group.spawn("lead", verisplit_command("lead", "serve", "--probation-requests",
                                str(probation), "--escrow-window", str(window), "--allow-undeterred",
                                "--listen", grpc_addr, "--http", http_addr,
                                "--checkpoint", str(checkpoint), "--data-dir", str(root / "lead"), "--audit-p",
                                f"{p.numerator}/{p.denominator}", "--calibration", str(calibration), "--audit-seed-file",
                                str(root / "seed.hex"), "--lead-key", str(keys / "lead.key"), "--heartbeat-interval",
                                str(heartbeat), "--offer-ttl", "3"))
    group.wait_ready([lead], 150)
    honest = []
    for name, layers in (("honest-lower", "0:2"), ("honest-upper", UPPER)):
        key = keys / f"{name}.key"
        if not key.exists():
            create_key_file(key)
        honest.append(group.spawn(name, verisplit_command(
            "provider", "serve", "--checkpoint", str(checkpoint), "--layers", layers, "--key", str(key), "--listen",
            "127.0.0.1:0", "--lead", grpc_addr, "--price", str(HONEST_PRICE), "--provider-id", name, "--dtype", "float32")))
    env = cheatkit.provider_env()
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH_DIR), env["PYTHONPATH"]])
    env[HONEST_REQUESTS_ENV] = str(honest_requests)
    env[CHEAT_LOG_ENV] = str(root / "cheat-log.jsonl")
    sybil = group.spawn("sybil", [sys.executable, str(Path(__file__).resolve()), "sybil", mode, "--key-dir",
                                  str(keys / "sybil"), "--id-prefix", "sybil", "--checkpoint", str(checkpoint), "--layers",
                                  UPPER, "--listen", "127.0.0.1:0", "--lead", grpc_addr, "--price", str(CHEAT_PRICE),
                                  "--dtype", "float32"], extra_env=env)
    group.wait_ready([*honest, sybil], 150)
    return {"http": f"http://{http_addr}", "grpc": grpc_addr, "ledger": root / "lead" / "ledger.db",
            "lead_key": keys / "lead.key", "cheat_log": root / "cheat-log.jsonl"}


def drive(net: dict[str, Any], requests: int, *, rejoin_timeout: float, seed: int = 0,
          max_tokens: int = 4) -> list[dict[str, Any]]:
    """``requests`` completions, each sent once a cheater is listed (or after ``rejoin_timeout``)."""
    import random

    import httpx

    rng = random.Random(seed)
    infos = []
    with httpx.Client(base_url=net["http"], timeout=120) as client:
        for _ in range(requests):
            deadline = time.monotonic() + rejoin_timeout
            while not _listed(client, "sybil") and time.monotonic() < deadline:
                time.sleep(0.02)
            prompt = [rng.randrange(5, 300) for _ in range(6)]
            infos.append(_request(client, prompt, max_tokens))
    return infos


def analyse(net: dict[str, Any], infos: list[dict[str, Any]], cost_fractions: list[Fraction]) -> dict[str, Any]:
    """Figures of one run, from the verified ledger (escrow per key) and the cheat log."""
    import subprocess

    from verisplit.impl.node.procs import verisplit_command
    from verisplit.impl.records.keys import load_key_file
    from verisplit.impl.records.ledger import Ledger
    from verisplit.spec.escrow import savings_fraction

    lead_key = bytes(load_key_file(net["lead_key"]).verify_key).hex()
    done = subprocess.run(verisplit_command("ledger", "verify", "--ledger", str(net["ledger"]), "--lead-key", lead_key),
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"ledger verify failed: {done.stdout}{done.stderr}")
    with Ledger(net["ledger"], create=False) as ledger:
        report = ledger.verify(bytes.fromhex(lead_key))
        bodies = [r.body for r in ledger.records()]
    assert report.ok and report.escrow is not None, report.message
    cheated_sessions = {}
    if net["cheat_log"].is_file():
        for line in net["cheat_log"].read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            cheated_sessions[row["session"]] = row["cheat"]
    sigma = savings_fraction("skip_layer", 2)
    cheater_keys: set[str] = set()
    served = cheated = caught = 0
    value_total = Fraction(0)
    spent_fraction = Fraction(0)  # compute spent in units of value: sum of v * (1 - sigma if cheated)
    refunded_caught = 0
    audited_at: dict[str, int] = {}
    for body in bodies:
        for entry in body["cohort"]:
            pid = entry["provider_id"]
            if not pid.startswith("sybil"):
                continue
            value = body["values"].get(pid, 0)
            cheater_keys.add(entry["public_key"])
            if body["work"].get(pid, 0) == 0 and pid not in body["failed"]:
                continue
            served += 1
            did_cheat = cheated_sessions.get(body["request_id"], True)  # skip_layer cheats on every request
            cheated += did_cheat
            value_total += value
            spent_fraction += value * (1 - sigma if did_cheat else 1)
            if pid in body["failed"]:
                caught += 1
                refunded_caught += value
        for member in body["escrow"]["members"]:
            if any(pid.startswith("sybil") for pid in member["provider_ids"]):
                audited_at[member["audit_p"]] = audited_at.get(member["audit_p"], 0) + 1
    keys = report.escrow["keys"]
    paid = sum(keys[k]["paid"] for k in cheater_keys if k in keys)
    vested = sum(keys[k]["vested"] for k in cheater_keys if k in keys)
    forfeited = sum(keys[k]["forfeited"] for k in cheater_keys if k in keys)
    held = sum(keys[k]["held"] for k in cheater_keys if k in keys)
    mean_value = value_total / served if served else Fraction(0)
    gains = {}
    for kappa in cost_fractions:
        cost = kappa * spent_fraction
        gains[str(kappa)] = {"cost": float(cost), "net_gain": float(vested - cost),
                             "net_gain_per_request": float((vested - cost) / served) if served else 0.0,
                             "honest_gain_per_request": float((1 - kappa) * mean_value)}
    return {"requests": len(infos), "cheater_requests": served, "cheated": cheated, "caught": caught,
            "keys": len(cheater_keys), "paid": paid, "vested": vested, "forfeited": forfeited, "held_end": held,
            "refunded_caught": refunded_caught, "value": float(value_total), "gains": gains,
            "mean_value": float(mean_value), "audit_p_seen": audited_at, "verify": report.message,
            "total": report.escrow["total"]}


SCENARIOS = {"baseline": ("skip_layer", True), "naive": ("skip_layer", False),
             "patient": ("franchise:PatientSkipLayer", False)}


def run_scenario(name: str, root: Path, checkpoint: Path, calibration: Path, args: argparse.Namespace) -> dict[str, Any]:
    from verisplit.impl.node.procs import ProcessGroup

    mode, baseline = SCENARIOS[name]
    probation, window = (0, 0) if baseline else (args.probation, args.window)
    work = root / name
    start = time.perf_counter()
    with ProcessGroup(work / "logs") as group:
        net = start_net(work, group, checkpoint, calibration, p=args.p, probation=probation, window=window, mode=mode,
                        honest_requests=args.probation)
        infos = drive(net, args.requests, rejoin_timeout=args.rejoin_timeout)
        figures = analyse(net, infos, args.cost_fractions)
    figures.update(scenario=name, probation=probation, window=window, mode=mode.split(":")[-1],
                   seconds=round(time.perf_counter() - start, 1))
    return figures


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    kappas = [str(k) for k in args.cost_fractions]
    head = ("| scenario | cheater | M | V | requests | served by cheater keys | cheated | keys (bans) | caught | paid | "
            "vested | forfeited (escrow) | held at end | refunded on caught requests (S2) | "
            + " | ".join(f"cheater net gain / request, cost {k} x v | honest gain / request, cost {k} x v" for k in kappas)
            + " |")
    lines = [head, "|---|---|" + "---:|" * (12 + 2 * len(kappas))]
    for r in rows:
        gains = " | ".join(f"{r['gains'][k]['net_gain_per_request']:+,.1f} | {r['gains'][k]['honest_gain_per_request']:+,.1f}"
                           for k in kappas)
        lines.append(f"| {r['scenario']} | {r['mode']} | {r['probation']} | {r['window']} | {r['requests']} | "
                     f"{r['cheater_requests']} | {r['cheated']} | {r['keys']} | {r['caught']} | {r['paid']:,} | "
                     f"{r['vested']:,} | {r['forfeited']:,} | {r['held_end']:,} | {r['refunded_caught']:,} | {gains} |")
    return "\n".join(lines)


def machine() -> str:
    import torch

    return (f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, torch {torch.__version__}, "
            f"{platform.system()} {platform.release()}")


def write_docs(text: str) -> None:
    path = ROOT / "docs" / "BENCHMARKS.md"
    doc = path.read_text(encoding="utf-8")
    block = f"<!-- franchise:begin -->\n{text}\n<!-- franchise:end -->"
    if "<!-- franchise:begin -->" in doc:
        doc = re.sub(r"<!-- franchise:begin -->.*?<!-- franchise:end -->", lambda _: block, doc, flags=re.S)
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(doc, encoding="utf-8")


def main(argv: list[str]) -> None:
    if argv and argv[0] == "sybil":
        sybil_main(argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--p", type=Fraction, default=Fraction(1, 10))
    parser.add_argument("--probation", type=int, default=None)
    parser.add_argument("--window", type=int, default=None)
    parser.add_argument("--cost-fractions", default="1,1/2",
                        help="compute cost of serving work of value v, as fractions of v (comma-separated)")
    parser.add_argument("--rejoin-timeout", type=float, default=10.0)
    parser.add_argument("--scenarios", default="baseline,naive,patient")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--docs", action="store_true", help="write the table into docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    args.cost_fractions = [Fraction(k) for k in args.cost_fractions.split(",")]
    sys.path[:0] = [str(TESTS_DIR), str(BENCH_DIR)]
    import tempfile

    from verisplit.impl.audit.calibrate import calibrate, write_calibration
    from verisplit.impl.runtime.checkpoint import make_random_checkpoint
    from verisplit.spec.escrow import DEFAULT_ESCROW_WINDOW, DEFAULT_PROBATION_REQUESTS, check_deterrence_config

    args.probation = DEFAULT_PROBATION_REQUESTS if args.probation is None else args.probation
    args.window = DEFAULT_ESCROW_WINDOW if args.window is None else args.window
    report = check_deterrence_config(args.p, args.probation, args.window)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="franchise-bench-"))
    checkpoint = make_random_checkpoint(root / "ckpt", layers=LAYERS, hidden=64, heads=4, kv_heads=2, vocab=320,
                                        max_position=128, seed=21)
    calibration = write_calibration(calibrate(checkpoint, dtype="float32", device="cpu", split=[(0, 2), (2, 4)],
                                              prompt_len=8, new_tokens=8, seeds=(0, 1)), root / "calibration.json")
    rows = []
    for name in args.scenarios.split(","):
        rows.append(run_scenario(name, root, checkpoint, calibration, args))
        print(json.dumps(rows[-1], default=str), flush=True)
    command = "python bench/franchise.py " + " ".join(a for a in (argv or [])) if argv else "python bench/franchise.py"
    worst = report.worst
    text = "\n".join([
        "## Franchise: the fresh-key cheater against probation and escrow",
        "",
        f"Machine: {machine()}. Command: `{command}`.",
        "",
        f"Real processes on loopback: a lead auditing at p = {args.p.numerator}/{args.p.denominator} per segment, an "
        f"honest provider on each half of a random 4-layer hidden-64 fp32 model (price {HONEST_PRICE}) and a cheater on "
        f"the upper half at price {CHEAT_PRICE} that re-joins under a fresh key within a heartbeat (0.2 s) of every "
        f"ban; each request (6 prompt tokens, 4 generated) is sent once a cheater key is listed. `baseline` is the "
        f"lead before issue 11 (no probation, payouts vest at once); `naive` and `patient` run probation "
        f"M = {args.probation} and window V = {args.window} requests (`check_deterrence_config` passes: worst kind "
        f"{worst.kind}, expected loss {float(worst.expected_loss):.2g} x value >= savings {float(worst.savings):.2g} x "
        f"value). `naive` skips a layer on every request; `patient` is honest for each key's first M requests (its "
        f"probation), then skips a layer on every request.",
        "",
        table(rows, args),
        "",
        "Cost model: serving work of value v costs a fraction of v (1: the spec's bound, savings <= cost <= value; "
        "1/2: a 50% margin); `skip_layer` on a 2-layer segment saves half of that cost. *Net gain* = vested payouts "
        "received minus the compute cost the cheater actually spent; *per request* = over the requests its keys "
        "served; an honest provider at the same price gains (1 - cost fraction) x v per request, so cheating pays iff "
        "the cheater's column is above the honest one. *Forfeited (escrow)* is what ejections took from the "
        "keys' held escrow (refunded to the clients of the requests it was earned on); *refunded on caught requests* "
        "is the caught request's own slice (rule S2). All figures are read back from the signed ledger after "
        "`ledger verify` passed (held + vested + forfeited = paid per key).",
    ])
    print(text)
    if args.docs:
        write_docs(text)


if __name__ == "__main__":
    main(sys.argv[1:])
