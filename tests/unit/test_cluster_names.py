"""A decode node's prefill peers behind a host name (issue 14): one peer per address the
name resolves to, joined as it appears, left as it goes, its scheduler's name in the
registry exactly while it is joined. Real nodes on two loopback addresses; only the name
service is replaced (the test cannot add names to this machine's resolver)."""

from __future__ import annotations

import trio

from actors import Node, Registry
from inferflux.config import ClusterConfig, Config
from inferflux.serving.cluster import ClusterNode
from inferflux.testing import free_port
from tests.support_actors import EchoActor


async def test_a_prefill_name_is_every_address_it_resolves_to() -> None:
    port = free_port()
    answers = [{"127.0.0.1"}]  # what "prefill.test" resolves to, as the test goes on

    async def resolver(host: str, _port: int) -> set[str]:
        assert host == "prefill.test"
        return answers[-1]

    config = Config(role="decode", cluster=ClusterConfig(prefill=[f"tcp://prefill.test:{port}"]))
    registry = Registry()
    cluster = ClusterNode(config, registry, resolver, resolve_every_s=0.1)

    def peers() -> list[str]:
        return sorted(name for name in registry.names() if name.startswith("prefill-"))

    async def until(condition) -> None:  # noqa: ANN001
        with trio.fail_after(10):
            while not condition():
                await trio.sleep(0.02)

    async with trio.open_nursery() as nursery:
        for host in ("127.0.0.1", "127.0.0.2"):  # two prefill nodes, same port
            away = Registry()
            node = await nursery.start(Node(f"prefill {host}", away).run)
            await nursery.start(EchoActor("scheduler", in_registry=away).run)
            await node.serve(f"tcp://{host}:{port}")
        await nursery.start(cluster.run)
        await until(lambda: peers() == ["prefill-0-127.0.0.1"])
        answers.append({"127.0.0.1", "127.0.0.2"})  # scaled up
        await until(lambda: peers() == ["prefill-0-127.0.0.1", "prefill-0-127.0.0.2"])
        await until(lambda: sum(link.up for link in cluster.node.links.values()) == 2)
        answers.append({"127.0.0.2"})  # the first one went away
        await until(lambda: peers() == ["prefill-0-127.0.0.2"])
        assert list(cluster.node.links) == [f"tcp://127.0.0.2:{port}"]
        nursery.cancel_scope.cancel()
