"""One wording of an error's gist and of a duration, for every place that shows them."""

from raytrain_orch.core.text import duration, gist


def test_gist_picks_the_line_asked_for():
    text = "Traceback (most recent call last):\n  File 'x.py'\n\nValueError: lr must be positive\n"

    assert gist(text, line="first") == "Traceback (most recent call last):"
    assert gist(text, line="last") == "ValueError: lr must be positive"


def test_gist_of_an_exception_without_a_message_is_its_type():
    assert gist(TimeoutError()) == "TimeoutError"
    assert gist("") == "" and gist(None) == ""


def test_gist_keeps_the_first_sentence_and_cuts_long_lines():
    assert gist(RuntimeError("Ray Train failed. See the log for more."), sentence=True) == "Ray Train failed"
    assert len(gist("x" * 1000)) == 300


def test_duration_reads_as_seconds_minutes_and_hours():
    assert [duration(s) for s in (None, 0.04, 12.34, 60, 125, 3600, 7380)] == [
        "-",
        "0.0 s",
        "12.3 s",
        "1 min",
        "2 min 5 s",
        "1 h",
        "2 h 3 min",
    ]
