import pytest

from services.api.stops import StopMatcher


@pytest.mark.parametrize(("stops", "deltas", "sent", "stopped"), [
    ([], ["ab", "cd"], "abcd", False),
    (["\n\n"], ["ab\n", "\ncd"], "ab", True),
    (["END"], ["xE", "N", "D tail"], "x", True),
    (["END"], ["xE", "Nope"], "xENope", False),
    (["b", "cd"], ["acd", "b"], "a", True),
    (["stop"], ["st"], "st", False),  # held back, then flushed when the output ends
])
def test_text_is_cut_at_the_first_stop_and_nothing_is_taken_back(stops, deltas, sent, stopped):
    matcher = StopMatcher(stops)
    out = "".join(matcher.feed(d) for d in deltas) + matcher.flush()
    assert (out, matcher.stopped) == (sent, stopped)


def test_nothing_is_sent_after_a_stop():
    matcher = StopMatcher(["."])
    assert matcher.feed("a.b") == "a"
    assert matcher.feed("more") == "" and matcher.flush() == ""
