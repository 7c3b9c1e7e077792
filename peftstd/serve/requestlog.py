"""The request log of `peftstd serve --request-log FILE`: one JSON line per request, for log shippers (Fluent Bit,
Vector, Loki) to read.

A line holds the request id (the client's `X-Request-Id` when it sent a well-formed one, else a new one; echoed in
the response), the key's name (never the key), model, route, status, sizes, timings, and per input the predicted
label and confidence. Input texts are left out unless `log_inputs` is set, and then pass through the masker first;
so do error messages, which may quote what a client sent.
"""

from __future__ import annotations

import datetime
import json
import random
import re
import sys
from typing import Any

from peftstd.serve.masking import mask

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if REQUEST_ID.fullmatch(text):
                return text
    return f"{random.getrandbits(128):032x}"  # unique enough to find a request, without uuid4's system call per request


def summary(result: Any) -> dict:
    """What the log keeps of one result: label and confidence, entity types, or the size of a generated text."""
    if not isinstance(result, dict):
        return {}
    if "entities" in result:
        return {"entities": [e["type"] for e in result["entities"]], "confidence": round(result["confidence"], 4)}
    if "label" in result:
        return {"label": result["label"], "confidence": round(result["score"], 4)}
    if "answer" in result:
        return {"confidence": round(result["score"], 4), "answered": bool(result["answer"])}
    if "tokens" in result:
        return {"tokens": result["tokens"]}
    return {}  # raw model outputs (V2 token-id requests)


def masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: masked(v) for k, v in value.items()}
    return value if isinstance(value, (int, float, bool)) or value is None else None


class RequestLog:
    def __init__(self, target: str, log_inputs: bool = False):
        self.log_inputs = log_inputs
        self.stream = sys.stdout if target == "-" else open(target, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - kept open while serving

    def write(self, entry: dict) -> None:
        """`entry` as the handlers filled it: outputs and inputs are summarised and masked here, off the hot path
        of a server without a log."""
        line = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"), **entry}
        outputs, inputs = line.pop("outputs", None), line.pop("inputs", None)
        if outputs is not None:
            line["outputs"] = [summary(r) for r in outputs]
        if inputs is not None and self.log_inputs:
            line["inputs"] = [masked(v) for v in inputs]
        if "error" in line:
            line["error"] = mask(line["error"])
        self.stream.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self.stream is not sys.stdout:
            self.stream.close()
