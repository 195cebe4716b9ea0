"""Feed health: per facility and per source, computed in Postgres from what ingestion already records
(``service``/``queries``), and the detectors that turn it into alert conditions (``detectors``)."""
