"""Stage 2: what a run would do: compare the requests with the lock file and the store, price
it, and turn it into jobs.
"""
