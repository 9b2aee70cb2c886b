"""Plain values <-> JSON, losslessly, without pickle (torch-free).

JSON cannot say everything Python can, so a few shapes are tagged as one-key objects:
`{"$tuple": [...]}` a tuple; `{"$float": "nan" | "inf" | "-inf"}` a non-finite float;
`{"$items": [[key, value], ...]}` a dict whose keys are not all strings (or one that has a key
starting with "$"); `{"$pickle": "<base64>"}` only when the caller allowed pickle on save AND load.
"""

from __future__ import annotations

import base64
import math
import pickle
from typing import Any

from kedge.ckpt.manifest import JSONValue

_SCALARS = (type(None), bool, int, str)


def is_plain(value: Any) -> bool:
    """True if value is made only of None, bool, int, float, str, list, tuple and dict."""
    if isinstance(value, (*_SCALARS, float)):
        return True
    if isinstance(value, list | tuple):
        return all(is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(is_plain(k) and is_plain(v) for k, v in value.items())
    return False


def to_json(value: Any, path: str, *, allow_pickle: bool = False) -> JSONValue:
    """Encodes a plain value; TypeError naming path for anything else (unless pickle is allowed)."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, list):
        return [to_json(v, f"{path}/{i}", allow_pickle=allow_pickle) for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {"$tuple": [to_json(v, f"{path}/{i}", allow_pickle=allow_pickle) for i, v in enumerate(value)]}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: to_json(v, f"{path}/{k}", allow_pickle=allow_pickle) for k, v in value.items()}
        return {
            "$items": [
                [
                    to_json(k, path, allow_pickle=allow_pickle),
                    to_json(v, f"{path}/{k}", allow_pickle=allow_pickle),
                ]
                for k, v in value.items()
            ]
        }
    if allow_pickle:
        return {"$pickle": base64.b64encode(pickle.dumps(value)).decode()}
    raise TypeError(
        f"cannot checkpoint {path or '<root>'}: type {type(value).__module__}.{type(value).__qualname__} is "
        "not a tensor, module, optimizer, stateful object (state_dict/load_state_dict) or plain value; "
        "pass allow_pickle=True to pickle it"
    )


def from_json(doc: JSONValue, path: str, *, allow_pickle: bool = False) -> Any:
    """Decodes what to_json wrote; refuses pickled values unless allow_pickle."""
    if isinstance(doc, list):
        return [from_json(v, path, allow_pickle=allow_pickle) for v in doc]
    if not isinstance(doc, dict):
        return doc
    if len(doc) == 1:
        ((tag, inner),) = doc.items()
        if tag == "$tuple":
            return tuple(from_json(v, path, allow_pickle=allow_pickle) for v in inner)
        if tag == "$float":
            return float(inner)
        if tag == "$items":
            return {
                _hashable(from_json(k, path)): from_json(v, path, allow_pickle=allow_pickle) for k, v in inner
            }
        if tag == "$pickle":
            if not allow_pickle:
                raise TypeError(f"{path}: value was pickled at save; pass allow_pickle=True to unpickle it")
            return pickle.loads(base64.b64decode(inner))
    return {k: from_json(v, f"{path}/{k}", allow_pickle=allow_pickle) for k, v in doc.items()}


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key
