"""TLS by flag: a lead and a provider that only speak TLS (self-signed certificate made with openssl)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from verisplit.impl.runtime.checkpoint import make_random_checkpoint
from verisplit.impl.node.procs import ProcessGroup, start_local_cohort

pytestmark = pytest.mark.net


def test_cohort_over_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
    checkpoint = make_random_checkpoint(tmp_path / "ckpt", layers=2, hidden=64, heads=4, kv_heads=2, vocab=512,
                                        max_position=128, seed=7)
    tls = ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(cert)]
    with ProcessGroup(tmp_path / "logs") as group:
        # the provider serves TLS and dials the lead's registry over TLS (grpcs:// + --tls-ca);
        # the lead serves its registry over TLS and dials the provider over TLS (--tls-ca).
        info = start_local_cohort(group, checkpoint, [(0, 2)], keys_dir=tmp_path / "keys", data_dir=tmp_path / "lead",
                                  extra_provider_args=tls, lead_args=tls, timeout=90)
        response = httpx.post(info["http"] + "/v1/completions",
                              json={"prompt": [1, 2, 3], "max_tokens": 3, "temperature": 0}, timeout=60)
        assert response.status_code == 200, response.text
        assert len(response.json()["verisplit"]["completion_token_ids"]) >= 1
        # A plaintext client cannot talk to the TLS provider.
        import grpc

        from verisplit.impl.node import verisplit_pb2 as pb
        from verisplit.impl.node import verisplit_pb2_grpc as pb_grpc

        with grpc.insecure_channel(info["providers"][0]["endpoint"]) as channel:
            with pytest.raises(grpc.RpcError):
                pb_grpc.ProviderStub(channel).Info(pb.InfoRequest(), timeout=5)
