"""How long a memory's names may be: limits that the table's primary key sets, checked by the
configuration and the input rules before anything reaches the server."""

from __future__ import annotations

__all__ = ["MAX_KEY_BYTES", "MAX_SCOPE_ID_BYTES", "MAX_TENANT_BYTES"]

# A btree index entry holds at most 2,704 bytes (a third of a page, less headers). The primary
# key's entry is the four identity columns: these limits keep the largest one at 2,475 bytes
# (tenant 128 + scope 7 + scope_id 256 + key 2,048 + 36 of headers and alignment), so no valid
# memory can fail with the server's "index row size exceeds maximum".
MAX_KEY_BYTES = 2_048
MAX_SCOPE_ID_BYTES = 256
MAX_TENANT_BYTES = 128
