"""CSV files lfm exports for people to open in a spreadsheet: a cell that would run as a formula is neutralised.

A spreadsheet runs a cell starting with ``=``, ``+``, ``-`` or ``@`` (and, in some, a tab or a carriage return
before them) as a formula: ``=HYPERLINK("http://...", "click")`` or worse, from a generated answer, an item's question
or a results folder's row. OWASP's rule (https://owasp.org/www-community/attacks/CSV_Injection): such a text cell
gets a leading ``'``, which spreadsheets show as text. Numbers stay numbers (a negative number is no formula).
The explorer's generations CSV and `lfm compare`'s items.csv go through ``csv_text``; files lfm reads back itself
(a results folder's tables) are data, not exports, and are written as they are.

    >>> neutralise("=1+1"), neutralise("-x"), neutralise("fine"), neutralise(-2.5)
    ("'=1+1", "'-x", 'fine', -2.5)
"""

from __future__ import annotations

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value):
    """``value`` with a leading ``'`` when it is text starting like a formula; anything else unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_text(table) -> str:
    """A pandas DataFrame as CSV text (no index), every text cell (column names too) through ``neutralise``. Lines
    end in CRLF (RFC 4180), so that a cell holding a carriage return is quoted (with pandas' default "\n" it is
    not, and a reader splits the row there)."""
    safe = table.rename(columns=neutralise)
    for column in safe.columns:
        if not pd.api.types.is_numeric_dtype(safe[column]):
            safe[column] = safe[column].map(neutralise)
    return safe.to_csv(index=False, lineterminator="\r\n")
