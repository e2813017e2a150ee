"""Queue message bodies as the Functions host stores them: Base64 text, or the text itself.

The Azure store reads the host's poisoned messages (``azure/_adoption``) and
the host emulation writes and reads queue messages (``durable_fx.queues``):
both need the host's body encoding, which lives here, below both.
"""

from __future__ import annotations

import base64
import binascii
from typing import Literal

__all__ = ["MessageEncoding", "decode_body", "encode_body"]

MessageEncoding = Literal["base64", "none"]


def encode_body(body: str | bytes, encoding: MessageEncoding = "base64") -> str:
    """The stored text of a message body, as an output binding would write it."""
    raw = body.encode() if isinstance(body, str) else body
    if encoding == "none":
        return raw.decode()
    return base64.b64encode(raw).decode("ascii")


def decode_body(text: str, encoding: MessageEncoding = "base64") -> bytes:
    """The body the host hands to a function; ``ValueError`` if Base64 text is malformed."""
    if encoding == "none":
        return text.encode()
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as error:
        raise ValueError(f"the message is not valid Base64 ({error})") from None
