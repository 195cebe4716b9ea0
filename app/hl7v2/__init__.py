"""HL7 v2 ADT over MLLP: the real-time feed of the EHRs that push no FHIR (Epic, Oracle, MEDITECH).

- ``mllp``: framing (``0x0B`` message ``0x1C 0x0D``), pure and incremental; also used by senders.
- ``message``: MSH read by hand for the listener (routing, dedup, the ACK), the full parse with
  python-hl7 (tolerant: versions, delimiters from MSH, terminators) for the worker; pure.
- ``ack``: original-mode acknowledgements (``AA``/``AE``/``AR``, MSA-2 = MSH-10).
- ``routing``: which facility a message belongs to (MSH-3/MSH-4) and which peers may connect.
- ``inbox``: the durable write before ``AA`` (group commit), quarantine, claiming rows per patient.
- ``listener``: the asyncio MLLP server (``ehr-ingest mllp serve``).
- ``service``: events → work: parse the committed rows' PID/PV1/MRG, resolve the patient over FHIR and
  re-read its resources (a Celery task).
"""
