"""Everything formatted for people: the plan, the status table, the progress and the summary of
a run.
"""
