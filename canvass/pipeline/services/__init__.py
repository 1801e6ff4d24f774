"""Services change pipeline data. Each takes a session and the acting user, checks
scope and rules, flushes, and leaves the commit to its caller (one request, one
sync push or one import batch is one transaction)."""
