"""jhansi where CI meets it: the GitHub Action's logic and the pre-commit hooks.

``python -m jhansi.ci.github`` turns jhansi's ``--json`` documents into a job
summary, workflow annotations and step outputs; ``python -m jhansi.ci.precommit``
selects the scripts a commit touches and checks or locks them. Both are thin:
they call the ``jhansi`` command line and read what it prints.
"""
