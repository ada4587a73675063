"""The SVID from a SPIRE agent's Workload API: a fake agent (the Workload API's
own gRPC service, from the spiffe library's protobufs) on a Unix socket."""

from __future__ import annotations

import queue
import socket
import ssl
import time
from concurrent import futures
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pki import CA, SERVER_ID, spiffe_daemon, svid_flags
from spiffe._proto import workload_pb2, workload_pb2_grpc


def _response(ca: CA, cert: Path, key: Path) -> workload_pb2.X509SVIDResponse:
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    der_key = serialization.load_pem_private_key(key.read_bytes(), None).private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    svid = workload_pb2.X509SVID(
        spiffe_id=SERVER_ID,
        x509_svid=leaf.public_bytes(serialization.Encoding.DER),
        x509_svid_key=der_key,
        bundle=ca.cert.public_bytes(serialization.Encoding.DER),
    )
    return workload_pb2.X509SVIDResponse(svids=[svid])


class FakeAgent(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
    """Streams whatever the test puts in ``updates`` (a rotation is a new item)."""

    def __init__(self) -> None:
        self.updates: queue.Queue[workload_pb2.X509SVIDResponse] = queue.Queue()

    def FetchX509SVID(self, request, context):
        while context.is_active():
            try:
                yield self.updates.get(timeout=0.2)
            except queue.Empty:
                continue


def _served_serial(url: str) -> int:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def test_the_daemon_takes_its_svid_from_the_workload_api(tachi_home: Path):
    pki = tachi_home / "pki"
    pki.mkdir()
    ca = CA("example.org")
    agent = FakeAgent()
    first = ca.svid(pki, "tachid-1", [SERVER_ID])
    agent.updates.put(_response(ca, *first))
    sock = tachi_home / "agent.sock"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(agent, server)
    server.add_insecure_port(f"unix://{sock}")
    server.start()
    identity = f'trust_domains = ["example.org"]\nworkload_api = "unix://{sock}"\n'
    daemon, url = spiffe_daemon(tachi_home, identity, {"spiffe://example.org/agent/*": "owner"})
    try:
        bundle = ca.bundle(pki / "bundle.pem")
        cert, key = ca.svid(pki, "me", ["spiffe://example.org/agent/me"])
        flags = svid_flags(url, cert, key, bundle)
        listed = daemon.run(*flags, "ls", "--json")
        assert listed.returncode == 0, listed.stderr
        # The agent rotates the SVID: the listener serves the new one, no restart.
        before = _served_serial(url)
        second = ca.svid(pki, "tachid-2", [SERVER_ID])
        agent.updates.put(_response(ca, *second))
        deadline = time.monotonic() + 15
        while _served_serial(url) == before:
            assert time.monotonic() < deadline, "the rotated SVID was never served"
            time.sleep(0.3)
        assert daemon.run(*flags, "ls").returncode == 0
    finally:
        daemon.stop()
        server.stop(0)
