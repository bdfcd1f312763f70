"""Registry admission rules in-process (fast): nonces, counters, id binding, suspension across
re-registration, demotion, allowlist, and the persistent counter file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc
import pytest
from nacl.signing import SigningKey

from verisplit.impl.node.admission import AdmissionPolicy, load_allowlist
from verisplit.impl.node.registry import Registry, RegistryError
from verisplit.impl.records.keys import CounterFile, SignedFields, heartbeat_signing_bytes, sign_offer
from verisplit.spec.cohort import ModelSpec
from verisplit.spec.commitment import PROTOCOL_VERSION

LEAD = SigningKey(bytes([9]) * 32)
NOW_MS = 1_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def registry(tmp_path: Path | None = None, **policy: object) -> Registry:
    return Registry(ModelSpec("m", 4), clock=Clock(), lead_public_key=bytes(LEAD.verify_key),
                    admission=AdmissionPolicy(**policy), wall_ms=lambda: NOW_MS,  # type: ignore[arg-type]
                    state_path=tmp_path / "state.json" if tmp_path else None)


def offer(reg: Registry, key: SigningKey, pid: str, first: int = 0, end: int = 4, counter: int = 10,
          **kw: object) -> tuple[SignedFields, bytes]:
    fields = SignedFields(PROTOCOL_VERSION, pid, bytes(key.verify_key), "m", bytes(32), 4, first, end, 1, "127.0.0.1:9",
                          10, NOW_MS, lead_public_key=bytes(LEAD.verify_key), nonce=reg.challenge(bytes(key.verify_key)),
                          expires_at_ms=NOW_MS + 1000, heartbeat_counter=counter)
    fields = dataclasses.replace(fields, **kw)  # type: ignore[arg-type]
    return fields, sign_offer(fields, key)


def beat(reg: Registry, key: SigningKey, pid: str, counter: int, leaving: bool = False) -> bool:
    sig = key.sign(heartbeat_signing_bytes(pid, NOW_MS, leaving, counter)).signature
    return reg.heartbeat(pid, NOW_MS, leaving, sig, counter)


def test_offer_is_unroutable_until_proven_and_counters_only_go_up() -> None:
    reg, key = registry(), SigningKey.generate()
    reg.register(*offer(reg, key, "p"))
    assert reg.offers() == [] and [e.fields.provider_id for e in reg.pending_probes()] == ["p"]
    reg.probe_passed("p", bytes(SigningKey.generate().verify_key))  # a proof under another key: no
    assert reg.offers() == []
    reg.probe_passed("p", bytes(key.verify_key))
    assert [o.provider_id for o in reg.offers()] == ["p"]
    assert beat(reg, key, "p", 11)
    for stale in (11, 10, 3):
        with pytest.raises(RegistryError, match="counter"):
            beat(reg, key, "p", stale, leaving=True)
    assert [o.provider_id for o in reg.offers()] == ["p"]
    with pytest.raises(RegistryError, match="heartbeat_counter"):  # re-registering cannot rewind the counter
        reg.register(*offer(reg, key, "p", counter=5))
    assert beat(reg, key, "p", 12, leaving=True) and reg.offers() == []


def test_suspension_survives_re_registration_and_outages_demote() -> None:
    reg = registry(demote_after=2)
    keys = {p: SigningKey.generate() for p in ("a", "b")}
    for n, (pid, key) in enumerate(keys.items()):
        reg.register(*offer(reg, key, pid, counter=10 + n))
        reg.probe_passed(pid, bytes(key.verify_key))
    reg.report_outage("a", "unreachable")
    assert [o.provider_id for o in reg.offers()] == ["b"] and reg.suspended() == {"a": "unreachable"}
    reg.register(*offer(reg, keys["a"], "a", counter=20))  # re-registering does not clear it
    assert reg.suspended() == {"a": "unreachable"}
    reg.probe_passed("a", bytes(keys["a"].verify_key))  # the health probe does
    assert [o.provider_id for o in reg.offers()] == ["a", "b"]
    reg.report_outage("a", "timeout")
    reg.probe_passed("a", bytes(keys["a"].verify_key))
    assert [o.provider_id for o in reg.offers()] == ["b"]  # two outages: demoted while b covers the model
    reg.report_outage("b", "timeout")
    reg.report_outage("b", "timeout")
    reg.probe_passed("b", bytes(keys["b"].verify_key))
    assert [o.provider_id for o in reg.offers()] == ["a", "b"]  # both demoted: neither is dropped


def test_nonce_binding_expiry_and_lead_binding() -> None:
    reg, key = registry(), SigningKey.generate()
    fields, sig = offer(reg, key, "p")
    reg.register(fields, sig)
    with pytest.raises(RegistryError, match="nonce"):  # single use
        reg.register(dataclasses.replace(fields, issued_at_ms=NOW_MS + 1, heartbeat_counter=99),
                     sign_offer(dataclasses.replace(fields, issued_at_ms=NOW_MS + 1, heartbeat_counter=99), key))
    for kw, match in ((dict(expires_at_ms=NOW_MS), "expired"), (dict(expires_at_ms=NOW_MS + 10**9), "ahead"),
                      (dict(lead_public_key=bytes(32)), "another lead")):
        with pytest.raises(RegistryError, match=match):
            reg.register(*offer(reg, key, "p", counter=50, **kw))
    reg.clock.now = 1.0  # type: ignore[attr-defined]  # nonces live 30 s (heartbeat-less offers 5 s: "p" is gone)
    stale, _ = offer(reg, key, "p", counter=60)
    reg.clock.now = 62.0  # type: ignore[attr-defined]
    with pytest.raises(RegistryError, match="nonce"):
        reg.register(stale, sign_offer(stale, key))


def test_ids_stay_bound_to_their_first_key_across_departures_and_lead_restarts(tmp_path: Path) -> None:
    reg, owner, squatter = registry(tmp_path), SigningKey.generate(), SigningKey.generate()
    reg.register(*offer(reg, owner, "p"))
    reg.probe_passed("p", bytes(owner.verify_key))  # the id is bound when its key proves itself
    assert beat(reg, owner, "p", 11, leaving=True)
    with pytest.raises(RegistryError) as caught:
        reg.register(*offer(reg, squatter, "p"))
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
    restarted = registry(tmp_path)  # the lead restarts: bindings and counters come back from disk
    with pytest.raises(RegistryError, match="another key"):
        restarted.register(*offer(restarted, squatter, "p"))
    with pytest.raises(RegistryError, match="heartbeat_counter"):
        restarted.register(*offer(restarted, owner, "p", counter=11))
    restarted.register(*offer(restarted, owner, "p", counter=12))


def test_allowlist(tmp_path: Path) -> None:
    admitted, stranger = SigningKey.generate(), SigningKey.generate()
    path = tmp_path / "allow.txt"
    path.write_text(f"# providers\n{bytes(admitted.verify_key).hex()}\n\n", encoding="utf-8")
    reg = registry(allowlist=load_allowlist(path))
    reg.register(*offer(reg, admitted, "ok"))
    with pytest.raises(RegistryError, match="not admitted"):
        reg.challenge(bytes(stranger.verify_key))
    path.write_text("zz\n", encoding="utf-8")
    with pytest.raises(ValueError, match=":1:"):
        load_allowlist(path)


def test_counter_file_continues_above_every_value_after_a_restart(tmp_path: Path) -> None:
    first = CounterFile(tmp_path / "k.counter")
    values = [first.next() for _ in range(5)]
    assert values == sorted(set(values))
    again = CounterFile(tmp_path / "k.counter")
    assert again.next() > values[-1]


def test_a_provider_that_keeps_failing_is_probed_later_and_later() -> None:
    reg, key = registry(), SigningKey.generate()
    reg.register(*offer(reg, key, "p"))
    reg.probe_passed("p", bytes(key.verify_key))
    clock = reg.clock
    for outages, wait in ((1, 1.0), (2, 2.0), (3, 4.0)):
        reg.report_outage("p", "timeout")
        assert beat(reg, key, "p", 100 + outages)  # keep the listing alive
        clock.now += wait - 0.5  # type: ignore[attr-defined]
        assert reg.pending_probes() == []
        clock.now += 0.5  # type: ignore[attr-defined]
        assert [e.fields.provider_id for e in reg.pending_probes()] == ["p"]
        reg.probe_passed("p", bytes(key.verify_key))


def test_readers_in_a_thread_never_race_registration_and_expiry() -> None:
    """Routing runs in a worker thread (api.py: ``asyncio.to_thread(lead.route)``) while the event loop
    registers and expires offers: readers must never see the dict change under them."""
    import sys
    import threading

    clock = Clock()
    reg = Registry(ModelSpec("m", 4), clock=clock, offer_ttl_s=5.0)  # open, no admission: fast registration
    signed = []
    for n in range(1500):  # one key per offer (rule C3)
        key = SigningKey.generate()
        fields = SignedFields(PROTOCOL_VERSION, f"p{n}", bytes(key.verify_key), "m", bytes(32), 4, 0, 4, 1,
                              "127.0.0.1:9", 10, NOW_MS)
        signed.append((fields, sign_offer(fields, key)))
    errors: list[BaseException] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                reg.offers()
                reg.entries()
                reg.pending_probes()
                reg.suspended()
            except BaseException as exc:  # noqa: BLE001 - the assertion below names it
                errors.append(exc)
                return

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    reader = threading.Thread(target=hammer)
    reader.start()
    try:
        for rounds in range(3):
            for fields, sig in signed:
                try:
                    reg.register(fields, sig)
                except RegistryError:
                    pass
            clock.now += 10.0  # every offer expires at the next read
            reg.entries()
    finally:
        stop.set()
        reader.join()
        sys.setswitchinterval(old)
    assert errors == []


def test_an_unproven_key_binds_no_id_and_its_failed_probe_drops_it(tmp_path: Path) -> None:
    """Squatting: a stranger registering "p" first (an endpoint it cannot prove) binds neither the id
    nor a counter, is dropped by its first failed probe, and the owner registers and binds "p"."""
    reg, owner, squatter = registry(tmp_path), SigningKey.generate(), SigningKey.generate()
    reg.register(*offer(reg, squatter, "p", counter=10**9))
    reg.probe_failed("p", bytes(owner.verify_key))  # a failure under another key drops nothing
    assert [e.fields.provider_id for e in reg.entries()] == ["p"]
    reg.probe_failed("p", bytes(squatter.verify_key))
    assert reg.entries() == [] and not (tmp_path / "state.json").exists()  # nothing bound, nothing saved
    reg.register(*offer(reg, squatter, "p"))
    reg.register(*offer(reg, owner, "p"))  # an unproven listing under another key holds no id
    reg.probe_passed("p", bytes(owner.verify_key))
    assert [o.public_key for o in reg.offers()] == [bytes(owner.verify_key)]
    with pytest.raises(RegistryError, match="another key"):
        registry(tmp_path).register(*offer(reg, squatter, "p"))  # bound on disk after the proof
    reg.probe_passed("p", bytes(owner.verify_key))
    with pytest.raises(RegistryError) as caught:
        reg.register(*offer(reg, squatter, "p"))
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS


def test_unproven_offers_are_capped() -> None:
    reg = registry(max_unproven=3)
    keys = [SigningKey.generate() for _ in range(5)]
    for n in range(3):
        reg.register(*offer(reg, keys[n], f"junk-{n}"))
    with pytest.raises(RegistryError) as caught:
        reg.register(*offer(reg, keys[3], "junk-3"))
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    reg.register(*offer(reg, keys[0], "junk-0", counter=11))  # re-registering a listed offer is no new one
    reg.probe_failed("junk-1", bytes(keys[1].verify_key))  # a failed probe frees a place
    reg.register(*offer(reg, keys[3], "junk-3"))
    assert len(reg.pending_probes()) == 3


def test_a_nonce_flood_never_evicts_a_key_s_only_nonce() -> None:
    """Nonces are capped per key (4) and in all (16 here); past the total, keys holding several lose
    theirs first, so a flood minting under other keys leaves an honest provider's single nonce valid."""
    reg = registry(max_nonces=16, nonces_per_key=4)
    honest = SigningKey.generate()
    fields, sig = offer(reg, honest, "p")  # its nonce is outstanding during the flood (and the oldest)
    flooders = [bytes(SigningKey.generate().verify_key) for _ in range(6)]
    for _ in range(100):
        for key in flooders:
            reg.challenge(key)
    assert len(reg._nonces) == 16
    reg.register(fields, sig)
    mine = reg.challenge(bytes(honest.verify_key))
    for _ in range(4):  # a key's own flood only replaces that key's nonces
        reg.challenge(bytes(honest.verify_key))
    assert not reg._nonces.valid(mine, bytes(honest.verify_key), 0.0)


def test_the_probe_loop_drops_an_unproven_offer_whose_endpoint_fails_its_probe() -> None:
    """ProbeLoop wiring: the probe run by ``Register`` (``kick``) against a closed port drops the
    unproven offer (``probe_failed``) instead of re-probing it every second."""
    import asyncio
    import socket

    from verisplit.impl.node.admission import ProbeLoop

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    reg, key = registry(), SigningKey.generate()
    reg.register(*offer(reg, key, "junk", endpoint=closed))

    async def go() -> None:
        loop = ProbeLoop(reg, lambda endpoint: grpc.aio.insecure_channel(endpoint))
        try:
            await loop.kick("junk")
        finally:
            await loop.close()

    asyncio.run(go())
    assert reg.entries() == [] and reg.pending_probes() == []
