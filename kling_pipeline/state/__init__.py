"""What persists between runs: the lock file (read strictly, written atomically, one run at a
time), the store of videos, and gc.
"""
