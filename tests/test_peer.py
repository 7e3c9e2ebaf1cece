"""A peer's outgoing queue: order, wake-ups, and the caps in messages and bytes that drop a slow client."""

from __future__ import annotations

from collab.peer import Peer
from collab.protocol import CLOSE_POLICY, User


def test_send_many_queues_in_order_wakes_once_and_drops_a_peer_that_falls_behind():
    woken = []
    peer = Peer(User("p", "#000"), queue_size=3, notify=lambda: woken.append(1))
    peer.send_many([])
    assert peer.outbox == [] and woken == []
    peer.send_many(["a", "b"])
    peer.send_many(["c"])
    assert peer.outbox == ["a", "b", "c"] and woken == [1] and not peer.closed
    peer.outbox = ["a"]
    peer.send_many(["b", "c", "d"])  # one more than the queue holds: as send() would, frame by frame
    assert peer.outbox == ["a", "b", "c"]
    assert peer.closed and peer.close_code == CLOSE_POLICY and not peer.flush
    peer.send_many(["e"])
    assert peer.outbox == ["a", "b", "c"]


def test_an_outbox_over_its_byte_cap_drops_the_peer_but_the_welcome_is_not_counted():
    peer = Peer(User("p", "#000"), queue_size=1000, queue_bytes=100)
    peer.greet("w" * 500)  # the welcome: bounded by the document's size, never counted
    peer.send("😀" * 20)  # 80 bytes in UTF-8, 20 code points
    assert not peer.closed and peer.queued_bytes == 80
    peer.send("x" * 30)  # 110 bytes: over the cap
    assert peer.closed and peer.close_code == CLOSE_POLICY and not peer.flush
    assert peer.close_reason.startswith("too slow")
    assert peer.outbox == ["w" * 500, "😀" * 20]


def test_taking_or_replacing_the_outbox_empties_its_byte_count():
    peer = Peer(User("p", "#000"), queue_bytes=100)
    peer.send_many(["a" * 60, "é" * 10])
    assert peer.queued_bytes == 80
    assert peer.take() == ["a" * 60, "é" * 10] and peer.queued_bytes == 0
    peer.send("b" * 90)
    peer.outbox = []  # as a transport that wrote everything does
    peer.send_many(["c" * 90])
    assert not peer.closed and peer.queued_bytes == 90
    peer.send_many(["d" * 5, "e" * 10])  # the second frame crosses the cap: kept up to it, then dropped
    assert peer.closed and peer.outbox == ["c" * 90, "d" * 5]
