"""In: market events from `market-data`, checked, into order books and closed 1-minute bars."""
