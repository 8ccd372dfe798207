"""inferflux-top's rendering of nodes: a node supervised in a real tree, linked over ipc to
another node, shows its link (peer, address, state, round trip) and the remote actor
imported through it; a link that went down says so."""

import trio

from actors import ActorInfo, ActorRef, ChildSpec, Node, Registry, Supervisor
from inferflux.top_data import Sample, actor_rows, model_lines, render
from tests.support_actors import Echo, EchoActor
from transports import SocketDir, unique_address


async def test_top_shows_nodes_links_and_remote_actors() -> None:
    with SocketDir("ifx-test") as directory:
        home, away = Registry(), Registry()
        far = Node("far", away, heartbeat_s=0.05)
        near = Node("near", home, heartbeat_s=0.05)
        root = Supervisor(
            "inferflux",
            [
                ChildSpec("local-echo", lambda: EchoActor("local-echo", in_registry=home)),
                ChildSpec("node", lambda: near),  # a node is a child like any other
            ],
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(far.run)
            await nursery.start(EchoActor("echo", in_registry=away).run)
            door = await far.serve(str(unique_address("ipc", "door", directory)))
            await nursery.start(root.run)
            link = await near.join(str(door))
            link.import_actor("echo", EchoActor, as_name="far-echo")
            await link.wait_up(timeout_s=10)
            assert await ActorRef("far-echo", home).call(Echo("hi")) == "hi"
            with trio.fail_after(5):
                while not link.round_trip_s:
                    await trio.sleep(0.02)

            rows = {row[0].strip(): row for row in actor_rows(root.info(), {})}
            assert rows["node near"][1:3] == ("node", "running")
            assert rows["node near"][-1] == "doors -"
            link_row = rows["far"]
            assert link_row[1:3] == ("node-link", "running")
            assert link_row[-1].startswith("link up, rtt ")
            assert link_row[-1].endswith(f" ms, at {link.channel.address}")
            assert float(link_row[-1].split()[3]) > 0
            assert link_row[6] == "1"  # requests sent to the peer
            remote = rows["far-echo"]
            assert remote[1:3] == ("remote", "running") and remote[-1] == "on node far as echo"
            text = render(Sample(root.info()))
            # indented under the node, under the root
            assert "\n    far " in text and "\n      far-echo " in text
            assert "last error / where" in text.splitlines()[0]

            far.request_stop()  # the far node goes away: the link and its actor go down
            await link.wait_down(timeout_s=5)
            rows = {row[0].strip(): row for row in actor_rows(root.info(), {})}
            assert rows["far"][2] == "restarting"
            assert rows["far"][-1].startswith("link down, rtt ")
            assert rows["far"][-1].endswith(": the connection closed")
            assert rows["far-echo"][2] == "stopped"
            root.request_stop()
            nursery.cancel_scope.cancel()


def test_a_decode_node_shows_its_prompts_on_prefill_nodes_and_kv_transfers() -> None:
    def model(*children: ActorInfo) -> ActorInfo:
        scheduler = ActorInfo(
            name="scheduler", kind="actor", state="running",
            details={"running": 3, "waiting": 0, "remote_prefills": 2},
        )  # fmt: skip
        return ActorInfo(
            name="model:m", kind="supervisor", state="running", children=[*children, scheduler]
        )

    node = ActorInfo(name="node decode@h:8000", kind="node", state="running")
    kvcache = ActorInfo(name="kvcache", kind="actor", state="running", details={"transfers": 1})
    [decode] = model_lines(Sample(ActorInfo(name="inferflux", kind="supervisor", state="running",
                                            children=[model(node, kvcache)])))  # fmt: skip
    assert "running 3, waiting 0, remote prefills 2, KV transfers 1," in decode
    [unified] = model_lines(Sample(model()))
    assert "remote prefills" not in unified
