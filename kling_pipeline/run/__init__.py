"""Stage 3: running the jobs: the executor, its ledger of lock writes, the API client, pacing.
"""
