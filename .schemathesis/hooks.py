"""Schemathesis hooks for scripts/fuzz: where the fuzzer's client follows the description's rules
that a schema cannot carry, and the one state-dependent refusal the description states.

Idempotency keys. The description says what a key is: it names one request (method, path and body), and a
repeat of that request with the same key is answered from the first time; the same key with
another request is refused (422). A generator cannot know that from a schema, and draws the
same few short keys for every request, so each key is made specific to the request it goes
with, as a client that follows the rule makes it: the drawn key with a digest of the request
after it. The same request keeps its key, so repeats still replay; a key the schema does not
allow (a negative case) is sent as drawn, for the server to refuse.

Integers. JSON Schema's `integer` includes 763.0, and the generator draws such numbers; the
description asks for integers written as JSON integers (763), which is what the server reads
as an integer. The client writes a whole number as an integer: the same number.

A completion for a player the batch does not expect is refused with 422, as the description
says (docs/api.md: "A completion for a player not expected is 422"). Whether a player is
expected depends on the batch the request names, not on the request's shape, so that refusal
of a request the schema allows is not a mismatch; every other refusal still is.

Where sequences start. The stateful phase starts its sequences only at operations it deems
likely to succeed with drawn data, and it deems a parameter named like `project_id` or
`student_id` a reference to a resource some operation must create first. In this API those are
the client's own identifiers (any project uuid, any positive student id: nothing creates
them), so every command that links onward is a place to start: createCollection and
recordAttempt as well as startBatch.
"""

import hashlib
import json
import re

import schemathesis
from schemathesis.specs.openapi import stateful as _stateful

KEY = "Idempotency-Key"
VISIBLE_ASCII = re.compile(r"[!-~]+")
DIGEST_CHARS = 16


def _whole_numbers_as_integers(value):
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, list):
        return [_whole_numbers_as_integers(item) for item in value]
    if isinstance(value, dict):
        return {name: _whole_numbers_as_integers(item) for name, item in value.items()}
    return value


@schemathesis.hook
def before_call(context, case, kwargs):
    # First the body as it is sent, then the key of exactly that request.
    if isinstance(case.body, (dict, list)):
        written = _whole_numbers_as_integers(case.body)
        if json.dumps(written) != json.dumps(case.body):
            case.body = written
    if case.headers is None or KEY not in case.headers:
        return
    key = case.headers[KEY]
    if not isinstance(key, str) or not VISIBLE_ASCII.fullmatch(key) or len(key) > 255:
        return
    request = json.dumps(
        [case.method.upper(), case.formatted_path, case.query, case.body],
        sort_keys=True,
        default=repr,
    )
    digest = hashlib.sha256(request.encode("utf-8", "surrogatepass")).hexdigest()[:DIGEST_CHARS]
    case.headers[KEY] = f"{key[: 255 - DIGEST_CHARS - 1]}.{digest}"


_deemed_likely_root = _stateful.is_likely_root_transition


def _likely_root(operation, node, produced_anywhere):
    return operation.method == "post" or _deemed_likely_root(operation, node, produced_anywhere)


_stateful.is_likely_root_transition = _likely_root


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keeps every failure but the one the module's text names."""
    if failure.code != "ST202" or response.status_code != 422:
        return True
    try:
        problem = json.loads(response.content)
    except (ValueError, TypeError):
        return True
    unexpected_player = (
        isinstance(problem, dict)
        and problem.get("field") == "player_lookup"
        and str(problem.get("detail", "")).endswith("is not expected in this batch")
    )
    return not unexpected_player
