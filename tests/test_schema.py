"""The shared schema helpers: comparing text with a choice."""
from cotdsl.schema import mentions, norm_text


def test_norm_text_ignores_case_punctuation_and_spacing():
    assert norm_text("  On the MAT, (warm)!  ") == "on the mat warm"
    assert norm_text("ice-cream") == "ice cream" and norm_text("...") == ""


def test_mentions_are_whole_words_with_exact_character_spans():
    text = "On the mat, warm. The Mat! the matter;  the-mat"
    assert [text[a:b] for a, b in mentions(text, "the mat")] == ["the mat", "The Mat", "the-mat"]
    assert [text[a:b] for a, b in mentions(text, "On the mat.")] == ["On the mat"]
    assert mentions(text, "mat warm") == [(7, 16)]  # across punctuation
    assert mentions("the matter", "mat") == [] and mentions("anything", "  ") == []
    assert mentions("mat mat mat", "mat mat") == [(0, 7)]  # left to right, not overlapping


def test_choice_mentions_prefer_the_longer_choice():
    from cotdsl.schema import choice_mentions

    t = "I saw the blue sky, then the sky. Grass!"
    got = [(t[a:b], i) for a, b, i in choice_mentions(t, ("sky", "blue sky", "grass"))]
    assert got == [("blue sky", 1), ("sky", 0), ("Grass", 2)]
    assert choice_mentions("nothing here", ("sky",)) == []
