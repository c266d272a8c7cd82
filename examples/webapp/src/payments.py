"""Charges through the payments API. The key is `STRIPE_API_KEY` from the environment, else from `.env`."""

import json
import os
import urllib.request
from pathlib import Path

API = os.environ.get("PAYMENTS_API", "http://127.0.0.1:8766")


def api_key() -> str:
    if os.environ.get("STRIPE_API_KEY"):
        return os.environ["STRIPE_API_KEY"]
    for line in (Path(__file__).resolve().parent.parent / ".env").read_text().splitlines():
        if line.startswith("STRIPE_API_KEY="):
            return line.split("=", 1)[1]
    raise KeyError("STRIPE_API_KEY")


def charge(amount_cents: int) -> dict:
    request = urllib.request.Request(f"{API}/v1/charges", data=json.dumps({"amount": amount_cents}).encode(),
                                     headers={"Authorization": f"Bearer {api_key()}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=15) as response:
        return json.load(response)
