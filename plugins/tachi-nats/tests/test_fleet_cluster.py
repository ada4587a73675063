"""A 3-node JetStream cluster: the fleet's buckets, stream and object store with 3
replicas; one node killed, the fleet goes on; the node comes back."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from nats_support import fleet, free_port, wait_until
from tachi_nats import server as server_mod

from tachi.models import PTYConfig
from tachi.testing import DaemonProcess

pytestmark = pytest.mark.xdist_group("heavy")


class Node:
    """One nats-server of a cluster on 127.0.0.1, restartable with its store."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.name = name
        self.port = free_port()
        self.cluster_port = free_port()
        self.routes: list[int] = []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in self.routes)
        conf = self.directory / "nats.conf"
        conf.write_text(
            f'listen: "127.0.0.1:{self.port}"\n'
            f'server_name: "{self.name}"\n'
            f'jetstream {{ store_dir: "{self.directory / "js"}" }}\n'
            f'cluster {{ name: "tachi", listen: "127.0.0.1:{self.cluster_port}",'
            f" routes: [ {routes} ] }}\n"
        )
        log = open(self.directory / "nats.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [server_mod.find_binary() or "nats-server", "-c", str(conf)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        assert server_mod.wait_for_port("127.0.0.1", self.port, self.proc, 10)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def cluster():
    root = Path(tempfile.mkdtemp(prefix="nats-cluster-", dir="/tmp"))
    nodes = []
    for i in (1, 2, 3):
        (root / f"n{i}").mkdir()
        nodes.append(Node(root / f"n{i}", f"n{i}"))
    for node in nodes:
        node.routes = [n.cluster_port for n in nodes if n is not node]
    for node in nodes:
        node.start()
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()
        shutil.rmtree(root, ignore_errors=True)


def replicas(url: str, stream: str) -> tuple[int, list[bool]]:
    """(configured replicas, whether each follower is current) of ``stream``."""

    async def main() -> tuple[int, list[bool]]:
        import nats

        nc = await nats.connect(url)
        try:
            info = await nc.jetstream(timeout=5).stream_info(stream)
            followers = info.cluster.replicas or []
            return info.config.num_replicas, [bool(r.current) for r in followers]
        finally:
            await nc.close()

    try:
        return asyncio.run(main())
    except Exception:
        return 0, []


def listed(observer: DaemonProcess) -> set[str] | None:
    """Session ids in ``fleet ls``, or ``None`` while the cluster cannot answer yet
    (electing its JetStream leaders)."""
    result = observer.run("fleet", "ls", "--json", timeout=30)
    if result.returncode != 0:
        return None
    return {s["id"] for s in json.loads(result.stdout)}


def test_one_of_three_nats_nodes_dies_and_the_fleet_goes_on(cluster, fleet_daemons, tmp_path):
    urls = [n.url for n in cluster]
    url_list = "[" + ", ".join(f'"{u}"' for u in urls) + "]"

    def config(host: str) -> str:
        return f'[fleet]\nurl = {url_list}\nhost = "{host}"\nreplicas = 3\n'

    daemons = {}
    for host in ("east", "west"):
        home = Path(tempfile.mkdtemp(prefix="tachi-", dir="/tmp"))
        daemons[host] = DaemonProcess(home, {"TACHI_LOAD_PLUGINS": "nats"}, config=config(host))
    observer = DaemonProcess(tmp_path, {"TACHI_LOAD_PLUGINS": "nats"}, config=config("observer"))
    try:
        for d in daemons.values():
            d.start()
        before = {h: d.new("sleep", "300")["id"] for h, d in daemons.items()}
        wait_until(
            lambda: listed(observer) == set(before.values()),
            40,  # the cluster elects its JetStream leaders first
            "both hosts' sessions on the cluster",
        )
        for stream in (
            "KV_tachi-sessions",
            "KV_tachi-hosts",
            "tachi-audit",
            "OBJ_tachi-recordings",
        ):
            wait_until(
                lambda stream=stream: replicas(urls[0], stream) == (3, [True, True]),
                20,
                f"{stream} with 3 current replicas",
            )

        cluster[0].kill()  # kill -9 of one node
        killed = time.monotonic()
        after = {h: d.new("sleep", "300")["id"] for h, d in daemons.items()}
        with daemons["east"].client() as client:
            for i in range(30):  # audit records while a node is down
                client.resize(after["east"], PTYConfig(rows=20 + i % 5, cols=80))
        wait_until(
            lambda: listed(observer) == set(before.values()) | set(after.values()),
            20,
            "sessions made after the kill in fleet ls",
        )
        print(f"fleet ls complete {time.monotonic() - killed:.1f} s after the kill")
        local = len((daemons["east"].state_dir / "audit" / "audit.jsonl").read_text().splitlines())

        # Right after a kill a reader may reach the dead node first, or a stream
        # whose leader is still being elected: an exit 1 then is tried again.
        def shipped() -> bool:
            records = fleet(observer, "audit", "--json", "--host", "east", check=False)
            return isinstance(records, list) and len(records) == local

        wait_until(shipped, 20, "east's audit records in the stream")
        assert {h["host"]: h["status"] for h in fleet(observer, "hosts", "--json")} == {
            "east": "up",
            "west": "up",
        }
        assert fleet(observer, "audit", "verify").returncode == 0

        cluster[0].start()  # the node comes back and catches up
        wait_until(
            lambda: replicas(urls[1], "tachi-audit") == (3, [True, True]),
            30,
            "the audit stream's 3 replicas current again",
        )
        only_n1 = DaemonProcess(
            tmp_path / "n1", {"TACHI_LOAD_PLUGINS": "nats"}, config=None
        )  # a reader that knows only the node that came back
        (tmp_path / "n1").mkdir(exist_ok=True)
        (tmp_path / "n1" / "config.toml").write_text(
            f'[fleet]\nurl = "{urls[0]}"\nhost = "observer"\n'
        )
        wait_until(lambda: len(listed(only_n1) or ()) == 4, 20, "fleet ls through the node")
    finally:
        for d in daemons.values():
            d.stop()
            shutil.rmtree(d.home, ignore_errors=True)
