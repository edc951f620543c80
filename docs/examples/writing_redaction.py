"""Redaction by key name and by value shape: what a payload is stored as (no database needed)."""

from __future__ import annotations

import json

from eventlog_persist import DEFAULT_DETECTORS, PayloadPolicy, prepare_payload

# Fake secrets, put together at run time so that no secret-shaped text sits in the source.
API_KEY = "sk-proj-" + "x" * 40
PASSWORD = "not-a-real-password"
DATABASE_URL = "postgresql://app:" + PASSWORD + "@db.internal:5432/app"


def main() -> None:
    payload = {
        "messages": [
            {"role": "user", "content": f"Use my key {API_KEY} to check the report."},
            {"role": "tool", "content": f"connected to {DATABASE_URL} in 12 ms"},
        ],
        "headers": [["Authorization", "Bearer " + "ab12" * 8], ["Accept", "application/json"]],
        "db_password": PASSWORD,
        "usage": {"input_tokens": 812, "output_tokens": 233, "max_tokens": 1024},
    }
    prepared = prepare_payload(payload)
    print(json.dumps(prepared.value, indent=2))

    # Every detector can be switched off on its own; an unknown name raises ConfigurationError.
    no_urls = PayloadPolicy(detectors=DEFAULT_DETECTORS - {"url_password"})
    print(prepare_payload(payload, policy=no_urls).redacted_paths)


if __name__ == "__main__":
    main()
