from common.models.text_stream import TextStream

WORDS = {1: "Hel", 2: "lo", 3: " wor", 4: "ld"}


def _decode(ids) -> str:
    return "".join(WORDS[i] for i in ids)


def test_deltas_add_up_to_the_whole_text():
    stream = TextStream(_decode)
    deltas = [stream.push([1, 2, 3, 4][: n + 1]) for n in range(4)]
    assert deltas == ["Hel", "lo", " wor", "ld"]


def test_an_incomplete_character_is_held_back_until_complete_or_final():
    utf8 = "é".encode()

    def decode(ids) -> str:
        return bytes([ord("a"), *utf8][: len(ids)]).decode(errors="replace")

    stream = TextStream(decode)
    assert stream.push([0]) == "a"
    assert stream.push([0, 1]) == "", "half of é is held back"
    assert stream.push([0, 1, 2]) == "é"
    cut = TextStream(decode)
    cut.push([0])
    assert cut.push([0, 1], final=True) == "\ufffd", "the last chunk flushes what is left"


def test_text_already_sent_is_never_taken_back_and_the_stream_goes_on():
    pieces = {1: "a ", 2: ".", 3: " b"}

    def decode(ids) -> str:  # a tokenizer clean-up: " ." becomes "."
        return "".join(pieces[i] for i in ids).replace(" .", ".")

    stream = TextStream(decode)
    assert stream.push([1]) == "a "
    assert stream.push([1, 2]) == "", "the rewrite of sent text is not sent"
    assert stream.push([1, 2, 3]) == " b"
    assert stream.sent.startswith("a ") and stream.sent.endswith(" b")
