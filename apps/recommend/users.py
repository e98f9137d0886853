"""User ids at rest: a storefront's id is kept as given, unless it is personal data.

Storefronts often know a user by an e-mail address or a phone number. Such an id (one that the PII
masker would change: an e-mail address, a phone, card, SSN or NI number, an IP address, a "dob:..."
or "cvv:..." value) is replaced by a pseudonym before it reaches Redis: the user's history,
exclusions and shown items, the event log the ranker trains on, a recommendation's record. The
pseudonym is ``pseudo-`` and an HMAC-SHA256 of the namespace and the id, so the same id is always the
same user, in its own namespace only. Under an empty key (DOMAINLLM_RECOMMEND_PSEUDONYM_KEY) a
low-entropy id such as a phone number can be recovered by guessing it: set a secret in production.

Ids that are not personal data (opaque storefront ids, most numeric ids) stay as they are, so that
operators and the training exports can still name them. The masker errs on the side of masking (a
16-digit id that passes the Luhn check reads as a card), which costs nothing here: such an id is
pseudonymised, consistently.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from apps.http.pii import mask_pii

PREFIX = "pseudo-"
_PSEUDONYM = re.compile(PREFIX + r"[0-9a-f]{32}")


def stored_user_id(user_id: str, namespace: str, key: bytes = b"") -> str:
    """``user_id`` as Redis may hold it: itself, or its pseudonym when it is personal data."""
    if _PSEUDONYM.fullmatch(user_id) or mask_pii(user_id) == user_id:
        return user_id
    digest = hmac.new(key, f"{namespace}\n{user_id}".encode(), hashlib.sha256).hexdigest()
    return PREFIX + digest[:32]
