"""Conversation ids as a client sees them, and as they are stored.

A conversation id lives in its owner's namespace: the client's `project-plan` is stored as
`{namespace}.project-plan`, the namespace a short digest of the owner principal's id. Two
callers choosing the same id get two conversations, so an id can be neither squatted nor
probed: another owner's id and an id that exists for nobody are the same, unknown, id.

Ids are mapped here only, where they enter (`lookup_ids`, `stored_id`) and leave
(`shown_id`) the service. Rows stored before namespaces (a bare id) stay their owner's under
that id. An admin sees the ids of other namespaces whole, and finds them by that id.
"""

from __future__ import annotations

import base64
import hashlib

NAMESPACE_LENGTH = 10
# A stored id: the namespace, a dot, and a client's id of up to 100 characters.
STORED_ID_LENGTH = NAMESPACE_LENGTH + 1 + 100


def namespace(principal_id: str) -> str:
    """Stable per principal: 10 characters of base32 SHA-256 (50 bits, lowercase)."""
    digest = hashlib.sha256(principal_id.encode()).digest()
    return base64.b32encode(digest).decode()[:NAMESPACE_LENGTH].lower()


def stored_id(principal_id: str, client_id: str) -> str:
    """The id a new conversation of this principal, named `client_id`, is stored under."""
    return f"{namespace(principal_id)}.{client_id}"


def shown_id(principal_id: str, stored: str) -> str:
    """The id a principal knows a stored conversation by: its own namespace left out (a
    bare id from before namespaces, or another namespace's for an admin, shown whole)."""
    prefix = namespace(principal_id) + "."
    return stored[len(prefix) :] if stored.startswith(prefix) else stored


def lookup_ids(principal_id: str, client_id: str) -> tuple[str, ...]:
    """Where the conversation a principal calls `client_id` may be stored, first match wins:
    in its namespace; else under the id itself (a row from before namespaces, or another
    namespace's whole id for an admin), which the caller checks the owner of. Not when that
    is the principal's own namespaced id of another conversation (no id has two names)."""
    own = stored_id(principal_id, client_id)
    if client_id.startswith(namespace(principal_id) + "."):
        return (own,)
    return own, client_id
