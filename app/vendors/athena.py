"""athenahealth (EHR-FACTS §1, §6-7).

- Whether ``_id=a,b,c`` is accepted is unverified: off by default (``batch_read=True`` per facility once
  checked).
- Preferred names as ``nickname``; ids such as ``a-1.E-123``: handled by the default adapter.
"""

from __future__ import annotations

from app.vendors.base import DefaultAdapter


class AthenaAdapter(DefaultAdapter):
    vendor = "athena"
    batch_read = False
