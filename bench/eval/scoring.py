"""The long-context evaluation's scores (the same definitions as bench/eval/eval_score.cc):

  string_match_all  RULER's: the fraction of the references found in the prediction, both lowered
  first_line        the prediction's first line with a non-blank character, stripped
  edit_similarity   1 − Levenshtein(a, b) / max(|a|, |b|) over UTF-8 bytes (1 when both are empty)

`self_test()` checks them on known answers (run by check_quick.py, the CTest bench/eval_quick).
"""


def string_match_all(prediction, references):
    if not references:
        return 0.0
    p = prediction.lower()
    return sum(1.0 for r in references if r.lower() in p) / len(references)


def first_line(text):
    for line in text.split("\n"):
        if line.strip():
            return line.strip()
    return ""


def levenshtein(a, b):
    a, b = a.encode(), b.encode()
    row = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        diag, row[0] = row[0], i
        for j in range(1, len(b) + 1):
            up = row[j]
            row[j] = min(row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1]))
            diag = up
    return row[len(b)]


def edit_similarity(a, b):
    n = max(len(a.encode()), len(b.encode()))
    return 1.0 if n == 0 else 1.0 - levenshtein(a, b) / n


def rescore(record, answers):
    """The scores of one stored record from its prediction: {"score": ...} or {"em": ..., "es": ...}."""
    pred = record.get("prediction", "")
    if record["task"] == "code":
        want = answers[0].strip()
        return {"em": 1.0 if pred == want else 0.0, "es": edit_similarity(pred, want)}
    return {"score": string_match_all(pred, answers)}


def self_test():
    """Known answers; raises AssertionError on the first wrong one."""
    cases = [
        (string_match_all(" 1234567.", ["1234567"]), 1.0),
        (string_match_all("The numbers are 123 and 9", ["123", "456", "9", "12"]), 0.75),
        (string_match_all("VAR abcde", ["ABCDE"]), 1.0),  # lowered on both sides
        (string_match_all("nothing", []), 0.0),
        (string_match_all("", ["x"]), 0.0),
        (first_line("\n  \n    x = os.path.join(a, b)  \ny"), "x = os.path.join(a, b)"),
        (first_line(" \n\t\n"), ""),
        (levenshtein("kitten", "sitting"), 3),
        (levenshtein("", "abc"), 3),
        (edit_similarity("kitten", "sitting"), 1 - 3 / 7),
        (edit_similarity("", ""), 1.0),
        (edit_similarity("abc", "abc"), 1.0),
        (edit_similarity("é", "e"), 0.0),  # bytes: é is two, so two edits of two
    ]
    for i, (got, want) in enumerate(cases):
        assert abs(got - want) < 1e-12 if isinstance(want, float) else got == want, f"case {i}: {got!r} != {want!r}"
    return len(cases)
