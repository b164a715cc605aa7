"""Bulk scanning (`counterfeit-scan scan-batch`): the listings read from a manifest (`listings`), scanned through the one
scan pipeline (`scanning`) in this process or in Ray actors (`ray_engine`), answers written where a rerun resumes
(`outputs`)."""
