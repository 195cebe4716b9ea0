"""``ehr-ingest``: the operator CLI, one module per noun, assembled in ``app.cli.main``.

Every command prints through ``app.cli.render`` and ends with one of these exit codes:

    0  done
    1  the command ran and its result is a failure (the demo lost a change)
    2  usage or configuration error: bad arguments, an unreadable or invalid YAML file, an unknown
       facility, an unmigrated database, a development command in an installation without the
       development packages. Fix the input, then run it again.
    3  no connection to Postgres (down, refusing, no such database): nothing was changed; run it
       again once the database answers.

Errors are one line on stderr, never a traceback. Imports here stay lazy (inside the commands) so that
``ehr-ingest --help`` is fast and the CLI never loads FastAPI, ``devstack`` or ``ehrsim`` before a
command needs them.
"""
