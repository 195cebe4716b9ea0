"""The periodic side: beat schedule and reconcile tasks (thin glue over ``app``)."""
