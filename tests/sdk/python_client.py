"""Sends events to sluice with the real posthog-python SDK.

usage: python_client.py HOST TOKEN MODE     MODE: default | gzip | v1
Exits non-zero if the SDK reports any error.
"""

import sys

from posthog import Posthog

host, token, mode = sys.argv[1], sys.argv[2], sys.argv[3]
options = {"gzip": mode == "gzip"}
if mode == "v1":
    options["capture_mode"] = "v1"
    options["capture_compression"] = "gzip"
errors = []
client = Posthog(token, host=host, on_error=lambda error, batch: errors.append(repr(error)), **options)
distinct_id = f"python-{mode}"
client.capture(
    "python event",
    distinct_id=distinct_id,
    properties={"mode": mode, "nested": {"list": [1, 2, 3]}, "text": "ünïcødé"},
)
client.set(distinct_id=distinct_id, properties={"plan": "pro"})
client.flush()
client.shutdown()
if errors:
    print("posthog-python reported errors:", errors, file=sys.stderr)
    sys.exit(1)
