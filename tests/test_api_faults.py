"""A provider emitting NaN is named to the client, streamed or not (issue 12, "faults are named").

A lead with an honest provider for layer 1 and two faulty ones for layer 0 (``api_fault_helpers``;
the cheaper one is routed first): NaN from step 2 (``LateNan``) and at once (``NanBoundary``). The
lead's boundary rule H5 refuses the NaN output (``bad_boundary``, blamed on its signer). Checked: a
stream delivers its first tokens, then one SSE error event naming the culprit, then ``data: [DONE]``;
a non-streamed request is a 502 OpenAI-shaped error naming the culprit, the reason and the link.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import httpx
import pytest

import cheatkit
from api_fault_helpers import NAN_FROM_STEP
from verisplit.impl.node.procs import ProcessGroup, free_port, verisplit_command
from verisplit.impl.records.keys import create_key_file
from verisplit.impl.runtime.checkpoint import make_random_checkpoint

pytestmark = pytest.mark.net


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("faults")
    checkpoint = make_random_checkpoint(root / "ckpt", layers=2, hidden=32, heads=2, kv_heads=1, vocab=320,
                                        max_position=64, seed=8)
    grpc = f"127.0.0.1:{free_port()}"
    (root / "keys").mkdir()
    with ProcessGroup(root / "logs") as group:
        lead = group.spawn("lead", verisplit_command("lead", "serve", "--listen", grpc, "--http",
                                                     f"127.0.0.1:{free_port()}", "--checkpoint", str(checkpoint),
                                                     "--data-dir", str(root / "lead")))
        ready = group.wait_ready([lead], 120)["lead"]
        children = []
        for name, layers, price, fault in (("honest-1", "1:2", 1, None), ("late-nan", "0:1", 1, "LateNan"),
                                           ("nan", "0:1", 2, "test_net_cheat_helpers:NanBoundary")):
            key = root / "keys" / f"{name}.key"
            create_key_file(key)
            args = ("--checkpoint", str(checkpoint), "--layers", layers, "--key", str(key), "--listen", "127.0.0.1:0",
                    "--lead", grpc, "--price", str(price), "--provider-id", name, "--dtype", "float32")
            if fault is None:
                children.append(group.spawn(name, verisplit_command("provider", "serve", *args)))
            else:
                mode = fault if ":" in fault else f"api_fault_helpers:{fault}"
                children.append(group.spawn(name, cheatkit.provider_command(mode, *args),
                                            extra_env=cheatkit.provider_env()))
        group.wait_ready(children, 120)
        with httpx.Client(base_url=ready["http"], timeout=60) as client:
            yield {"client": client, "lead": lead}
        assert "Traceback" not in lead.log_path.read_text()


def test_a_stream_names_the_nan_provider_then_ends_with_done(net: dict[str, Any]) -> None:
    body = {"prompt": "hello there", "max_tokens": 6, "temperature": 0, "stream": True}
    with net["client"].stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]", events[-3:]
    error = json.loads(events[-2])["error"]
    assert (error["culprit"], error["reason"], error["link"]) == ("late-nan", "bad_boundary", 0)
    assert error["type"] == "cohort_error" and "late-nan" in error["message"] and error["param"] is None
    chunks = [json.loads(e) for e in events[:-2]]
    assert chunks and all("error" not in c and c["object"] == "text_completion" for c in chunks)
    info = net["client"].get(f"/v1/requests/{error['request_id']}").json()
    assert info["status"] == "aborted" and info["culprit"] == "late-nan"
    assert info["usage"]["completion_tokens"] == NAN_FROM_STEP  # streamed before the fault (chunks may join tokens)


def test_a_non_streamed_request_is_a_502_naming_the_culprit(net: dict[str, Any]) -> None:
    client = net["client"]
    listed = {p["provider_id"] for p in client.get("/v1/providers").json()["data"]}
    culprit = "late-nan" if "late-nan" in listed else "nan"  # ejected after its first fault, or not
    reply = client.post("/v1/completions", json={"prompt": "hello again", "max_tokens": 6, "temperature": 0})
    assert reply.status_code == 502, reply.text
    error = reply.json()["error"]
    assert (error["culprit"], error["reason"], error["link"]) == (culprit, "bad_boundary", 0)
    assert set(error) >= {"message", "type", "param", "code"} and error["code"] == "bad_boundary"
    info = client.get(f"/v1/requests/{error['request_id']}").json()
    assert (info["status"], info["culprit"]) == ("aborted", culprit)
