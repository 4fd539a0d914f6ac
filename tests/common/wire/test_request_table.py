from common.wire.commands import Expand
from common.wire.request_table import RequestTable


def test_messages_before_start_are_replayed_at_start() -> None:
    table: RequestTable[str] = RequestTable()
    early = Expand("r1", 0, 0)
    assert table.route(early) is None
    assert table.start("r1", "state") == [early]
    assert table.route(Expand("r1", 1, 0)) == "state"


def test_requests_are_found_by_id_and_independent() -> None:
    table: RequestTable[str] = RequestTable()
    table.start("a", "A")
    table.start("b", "B")
    assert (table.route(Expand("a", 0, 0)), table.route(Expand("b", 0, 0))) == ("A", "B")
    assert table.end("a") == "A"
    assert "a" not in table and "b" in table and len(table) == 1


def test_messages_of_an_ended_request_are_dropped_not_held() -> None:
    table: RequestTable[str] = RequestTable()
    table.start("a", "A")
    table.end("a")
    assert table.route(Expand("a", 5, 0)) is None
    assert table.start("a", "again") == [], "nothing of the ended request was held"


def test_end_of_a_request_never_started_discards_its_held_messages() -> None:
    table: RequestTable[str] = RequestTable()
    table.route(Expand("x", 0, 0))
    assert table.end("x") is None
    assert table.start("x", "X") == []


def test_ended_ids_are_bounded() -> None:
    table: RequestTable[str] = RequestTable()
    for i in range(RequestTable.ENDED_LIMIT + 1):
        table.end(f"r{i}")
    table.route(Expand("r0", 0, 0))  # forgotten as ended: held again, bounded by EarlyMessages
    assert len(table.start("r0", "R")) == 1
