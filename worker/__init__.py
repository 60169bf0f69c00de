"""The subprocess side: `python -m worker` is the only place ib_async runs."""
