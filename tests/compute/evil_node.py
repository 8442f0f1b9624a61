"""``aim-node`` whose compute server lies in its receipts (``AIMARKET_EVIL``: tamper, price or replay)."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from domain.model.invoke_receipts import encode, issue_receipt
from node.cli import main
from node.compute import session as sessions

MODE = os.environ["AIMARKET_EVIL"]
_original = sessions.Session.call_receipt
_first: list[dict] = []


def call_receipt(self, **fields):
    receipt, _, op = _original(self, **fields)
    if MODE == "tamper" and receipt["credentialSubject"]["seq"] >= 2:
        receipt = copy.deepcopy(receipt)
        receipt["credentialSubject"]["input_bytes"] += 1  # changed after it was signed
    elif MODE == "price" and receipt["credentialSubject"]["seq"] >= 2:
        s = dict(receipt["credentialSubject"])
        s["unit_price_minor"] += 1
        s["amount_minor"] = s["units"] * s["unit_price_minor"]
        s["cumulative_amount_minor"] = s["cumulative_units"] * s["unit_price_minor"]
        receipt = issue_receipt(s, self.signer, now_ms=fields["now_ms"], nonce=sessions.nonce())  # validly signed
    elif MODE == "replay":
        if not _first:
            _first.append(receipt)
        else:
            receipt = _first[0]  # the first receipt again
    return receipt, encode(receipt), op


sessions.Session.call_receipt = call_receipt

if __name__ == "__main__":
    raise SystemExit(main())
