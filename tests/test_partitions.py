"""Pure logic of the stream layer: shares, rebalancing plans, placement, entry codecs, pacing."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.placement import least_loaded, session_id_in
from shared import topology
from shared.keys import Stage
from shared.leases import Lease, plan, share
from shared.messages import (
    AgentInput,
    AudioIn,
    InputKind,
    Modality,
    Reply,
    entry_parts,
    session_of,
)
from shared.ownership import Acker, Partition, Reads
from shared.pacing import LIGHT_SESSIONS, LOADED_SESSIONS, Pacing
from vad_worker.state import SessionVadState


@pytest.mark.parametrize("replicas", [1, 2, 3, 5, 32, 40])
def test_shares_cover_every_partition_once(replicas: int) -> None:
    members = [f"r{i}" for i in range(replicas)]
    shares = [share(members, m, 32) for m in members]
    assert sum(shares) == 32
    assert max(shares) - min(shares) <= 1


def test_a_replica_not_yet_listed_counts_itself() -> None:
    assert share(["a"], "b", 32) == 16


def test_plan_releases_the_excess_and_takes_only_free_partitions() -> None:
    assert plan({0, 1, 2, 3}, set(), 2) == ([3, 2], [])
    assert plan({0}, {5, 1, 7}, 3) == ([], [1, 5])
    assert plan({0, 1}, {4}, 2) == ([], [])
    # Taken partitions that are not free stay where they are.
    assert plan(set(), {9}, 4) == ([], [9])


def test_two_replicas_converge_on_a_split() -> None:
    """Both apply the same rule from the same view: the partitions end up split, none twice."""
    holders: dict[int, str] = dict.fromkeys(range(8), "a")
    for _ in range(3):
        for me in ("a", "b"):
            owned = {n for n, h in holders.items() if h == me}
            free = {n for n in range(8) if n not in holders}
            release, take = plan(owned, free, share(["a", "b"], me, 8))
            for n in release:
                del holders[n]
            for n in take:
                holders[n] = me
    assert sorted(holders.values()).count("a") == 4
    assert sorted(holders.values()).count("b") == 4


def test_placement_picks_the_emptiest_partition_of_the_least_loaded_replica() -> None:
    load = {0: ("a", 5), 1: ("a", 5), 2: ("b", 1), 3: ("b", 3)}
    assert least_loaded(load, 32) == 2
    assert least_loaded({}, 32) is None
    sid = session_id_in(2)
    assert topology.partition_of(sid) == 2


def test_entries_round_trip_and_leave_defaults_out() -> None:
    entry = AgentInput(session_id="s1", kind=InputKind.ACTION, turn=3,
                       action={"type": "tool", "details": {"tool": "x"}},
                       modality=Modality.AUDIO)
    # As Redis gives them back: every name and value as bytes.
    fields = {str(k).encode(): v if isinstance(v, bytes) else str(v).encode()
              for k, v in entry.encode().items()}
    assert AgentInput.decode(fields) == entry
    assert session_of(fields) == "s1"
    assert set(AudioIn(session_id="s", pcm=b"\x01\x00").encode()) == {"session_id", "pcm"}
    assert set(Reply(session_id="s", pcm=b"ab").encode()) == {"session_id", "pcm"}


def test_send_refuses_the_wrong_entry_type_for_a_stage() -> None:
    class Recorder:
        def xadd(self, *args: object, **kwargs: object) -> None:
            raise AssertionError("must not be written")

    with pytest.raises(TypeError):
        topology.send(Recorder(), Stage.VAD, AgentInput(session_id="s"))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        topology.send(Recorder(), Stage.VAD, AudioIn())  # type: ignore[arg-type]


def test_a_checkpoint_without_audio_keeps_everything_else() -> None:
    st = SessionVadState(session_id="s", pos=12345, triggered=True, buf_start=100,
                         voiced=900, buffer=bytearray(b"\x01\x02" * 50),
                         preroll=bytearray(b"\x03\x04" * 10), remainder=b"\x05\x06")
    back = SessionVadState.from_bytes(st.to_bytes(with_audio=False))
    assert back.buffer == bytearray() and back.preroll == bytearray()
    same = dataclasses.replace(back, buffer=st.buffer, preroll=st.preroll)
    assert same.to_bytes() == st.to_bytes()


def test_an_audio_batch_gives_each_session_its_own_audio_entry() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.entries: list[tuple[str, dict[bytes, bytes]]] = []

        def xadd(self, stream: str, fields: dict[bytes, bytes], **_: object) -> None:
            self.entries.append((stream, fields))

    sids = [session_id_in(3), session_id_in(3), session_id_in(7)]
    w = Recorder()
    topology.send_audio(w, {sid: bytes([i, 0]) * 4 for i, sid in enumerate(sids)})  # type: ignore[arg-type]
    # One entry per partition, each holding every session of that partition.
    assert sorted(s for s, _ in w.entries) == sorted(
        {topology.input_stream(Stage.VAD, sid) for sid in sids})
    parts = {sid: AudioIn.decode(f) for _, fields in w.entries
             for sid, f in entry_parts(fields)}
    assert parts == {sid: AudioIn(session_id=sid, pcm=bytes([i, 0]) * 4)
                     for i, sid in enumerate(sids)}
    # Ordinary entries are one part, as they are.
    single = {b"session_id": b"s1", b"pcm": b"ab"}
    assert entry_parts(single) == [("s1", single)]


def test_a_shared_entry_is_acknowledged_once_every_session_has() -> None:
    part = Partition(Stage.VAD, Lease(0, 1, 2000, 0.0))
    a, b = Acker(part, "a"), Acker(part, "b")
    part.share(b"1-0", ["a", "b"])
    part.share(b"2-0", ["a", "b"])
    a.ack(b"1-0", b"2-0")
    assert part.to_ack == []
    b.ack(b"1-0")
    a.ack(b"3-0")  # not shared: at once
    assert part.to_ack == [b"1-0", b"3-0"]
    # A session closed for good lets go of what it still shared.
    part.ack_all("b")
    assert part.to_ack == [b"1-0", b"3-0", b"2-0"] and not part.shared


def test_audio_moves_every_light_interval_for_few_sessions_and_the_loaded_one_under_load(
        ) -> None:
    pacing = Pacing.from_ms(40, 80)
    assert pacing.interval_s(1) == pacing.interval_s(LIGHT_SESSIONS) == 0.04
    assert pacing.interval_s(LOADED_SESSIONS) == pacing.interval_s(5000) == 0.08
    middle = (LIGHT_SESSIONS + LOADED_SESSIONS) // 2
    assert pacing.interval_s(middle) == pytest.approx(0.06)
    steps = [pacing.interval_s(n) for n in range(LIGHT_SESSIONS, LOADED_SESSIONS + 1)]
    assert steps == sorted(steps)
    assert Pacing.from_ms(40, 40).interval_s(5000) == 0.04  # one cadence whatever the load


async def test_reads_a_gatherer_asked_for_follow_without_blocking_and_are_awaitable() -> None:
    reads = Reads()
    assert not reads.begin()  # nobody asked: the read blocks
    in_hand = reads.follow_up()  # a handler of read 1's entries wants the rest of the write
    after = reads.finished_after(in_hand)
    reads.end()
    assert in_hand == 1 and not after.done()  # read 1 is the one in hand, not the one after
    assert reads.begin()  # read 2 does not block
    reads.end()
    assert after.done()
    assert not reads.begin()  # nobody asked again: read 3 blocks
    assert reads.finished_after(1).done()  # read 2 is in already
    pending = reads.finished_after(3)
    reads.end()
    assert not pending.done()
    reads.begin()
    reads.end()
    assert pending.done()
