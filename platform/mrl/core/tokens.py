"""The token-id convention text encoders and tokenizers share: [PAD] is id 0, and padded columns can be cut."""

from __future__ import annotations

import numpy as np

PAD_ID = 0


def trim_padding(ids):
    """Token ids (B, T) (numpy or torch) cut to the longest sequence of the batch: the columns after it are all
    [PAD], which the encoder masks out anyway, so the result embeds identically at a fraction of the cost."""
    used = (ids != PAD_ID).any(0)  # (T,)
    used = used.numpy() if hasattr(used, "numpy") else np.asarray(used)
    columns = np.flatnonzero(used)
    return ids[:, :int(columns[-1]) + 1 if len(columns) else 1]
