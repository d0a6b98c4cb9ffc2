"""Every seed derived from the experiment's one seed, in one place: which stream, which formula.

- `site-torch`, torch's global generator at a site for one message (dropout, adversarial
  training's random starts): base * 10000 + round * 10 + site index (+ 5 when fine-tuning);
- `site-shuffle`, a site's training loader order in one round: base + round * 100 + site index;
- `outsider-torch`, torch's global generator while the outsider trains a surrogate
  (initial weights, dropout): base + 991;
- `outsider-shuffle`, the outsider's training loader order: base + 17;
- `pooled-torch`, torch's global generator while the pooled baseline trains (after its
  initial weights, drawn as the server draws the federation's: base itself): base + 773;
- `pooled-shuffle`, the pooled baseline's training loader order: base + 29;
- `feddf-batches`, the public images each distillation step draws (server.feddf), per
  round and architecture (its index in federation.architectures as `site`):
  base + 50000 + round * 100 + index;
- `attack`, the attack side's draws, named by labels (the control's signs per image, the
  universal attacks' fit share per dataset, each attack's random start and input diversity
  per source model): the first 63 bits of sha256("base:label:...").

The server (its initial global model) and the attack service seed torch with base itself.
The site and outsider formulas are the ones the stored federations and surrogates were
trained with; a new formula would change their weights. Python's hash() is salted per
process, so labels go through sha256.
"""

from __future__ import annotations

import hashlib
from typing import Literal

Stream = Literal[
    "site-torch",
    "site-shuffle",
    "outsider-torch",
    "outsider-shuffle",
    "pooled-torch",
    "pooled-shuffle",
    "feddf-batches",
    "attack",
]


def derive_seed(
    base: int,
    stream: Stream,
    *labels: object,
    server_round: int = 0,
    site: int = 0,
    finetune: bool = False,
) -> int:
    """The seed of `stream` (see the module's list) from the experiment's seed `base`.
    `labels` name an `attack` draw; `server_round` and `site` (the site's index in A..D)
    place a site's streams, `finetune` the fine-tune message's."""
    if (stream == "attack") != bool(labels):
        raise ValueError(f"seed stream {stream}: labels name the attack stream's draws, and only those")
    if not stream.startswith(("site-", "feddf-")) and (server_round or site):
        raise ValueError(f"seed stream {stream}: only a site's streams take a round and a site")
    if finetune and stream != "site-torch":
        raise ValueError(f"seed stream {stream}: only site-torch tells the fine-tune message apart")
    if stream == "site-torch":
        return base * 10_000 + server_round * 10 + site + (5 if finetune else 0)
    if stream == "site-shuffle":
        return base + server_round * 100 + site
    if stream == "outsider-torch":
        return base + 991
    if stream == "outsider-shuffle":
        return base + 17
    if stream == "pooled-torch":
        return base + 773
    if stream == "pooled-shuffle":
        return base + 29
    if stream == "feddf-batches":
        return base + 50_000 + server_round * 100 + site
    digest = hashlib.sha256(":".join(map(str, (base, *labels))).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
