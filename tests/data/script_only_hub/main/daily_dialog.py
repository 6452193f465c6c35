"""A loading script, as DailyDialog's repository holds: datasets >= 4 refuses to run it."""
raise RuntimeError("a loading script must not be run")
