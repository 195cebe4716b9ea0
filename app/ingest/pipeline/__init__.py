"""The ingest pipeline, one for every source (webhook inbox, reconciler, HL7 v2): from references (or
full resources already in hand) of one facility to version-guarded rows in Postgres.

    Work (refs, identifiers, payloads)
      │ fetch.py        reads (batched ``_id`` searches where the adapter allows), identifier searches
      │ normalize.py    the vendor adapter's pure normalization; the references it asks for
      │ references.py   referenced resources fetched once per process and facility (ReferenceCache)
      ▼ store.py        one set-based, version-guarded write: upserts, history, change feed
    Fetched → StoreStats

It knows nothing about inbox rows: callers map outcomes back to their own records (``app.ingest.drain``
marks rows). Types point one way: ``observed`` ← ``fetch``/``normalize``/``store`` ← ``service``.
"""
