"""Coverage-guided fuzzing of the untrusted edges with atheris (libFuzzer), run by ``make fuzz``.

    python -m tests.fuzz.atheris_harness [libFuzzer flags, e.g. -max_total_time=60]

The first input byte picks a target; the rest is the payload:
  0: Avro single-object bytes -> ``AvroCodec.decode``
  1: a JSON line -> ``json.loads`` -> ``event_from_json``
  2: a batch (payload split on ``\\xff\\xfe``) -> the whole apply path (BatchProcessor + MemorySink)
Any exception other than ``DecodeError``/``InvalidEvent`` (or a broken invariant) is a crash.

atheris is optional (not in the dev extra): without it this prints a note and exits 0. The
corpus lives in ``build/fuzz-corpus`` (seeded with valid encodings on first run), crash inputs
in ``build/fuzz-artifacts``.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

try:
    import atheris
except ImportError:  # pragma: no cover - depends on the machine
    atheris = None

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "build" / "fuzz-corpus"
ARTIFACTS = ROOT / "build" / "fuzz-artifacts"
SEPARATOR = b"\xff\xfe"

if atheris is not None:
    with atheris.instrument_imports(include=["processors", "streams"]):
        from processors.codec import AvroCodec
        from processors.errors import DecodeError, InvalidEvent
        from processors.event import event_from_json, event_to_json
        from streams.failures.routing import DLT_REASON
        from tests.processors.strategies import make_event
        from tests.streams.inprocess import in_process

    CODEC = AvroCodec()


def _decode(payload: bytes) -> None:
    try:
        CODEC.decode(payload)
    except (DecodeError, InvalidEvent) as exc:
        assert exc.reason in ("undecodable", "invalid", "too_large"), exc.reason


def _json(payload: bytes) -> None:
    try:
        obj = json.loads(payload.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        return  # not JSON: `recon produce` rejects the line before event_from_json
    with contextlib.suppress(InvalidEvent):
        CODEC.encode(event_from_json(obj, CODEC.limits))


def _batch(payload: bytes) -> None:
    values: list[bytes | None] = list(payload.split(SEPARATOR))[:32]
    run = in_process(CODEC)
    result = run.run(values)
    assert sum(result.counts.values()) == len(values), result.counts
    assert all(dict(c.headers).get(DLT_REASON) for c in run.sender.sent)


TARGETS = (_decode, _json, _batch)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    TARGETS[data[0] % len(TARGETS)](data[1:])


def _seed_corpus() -> None:
    CORPUS.mkdir(parents=True, exist_ok=True)
    if any(CORPUS.iterdir()):
        return
    seeds = [
        make_event(entity_id="acct-1", fields={"balance": 120.5, "status": "open"}),
        make_event(entity_id="acct-2", version=7, fields={"n": None, "ok": True, "s": "x" * 40}),
    ]
    encoded = [CODEC.encode_with(e, name) for e in seeds for name in sorted(CODEC.schemas)]
    for n, data in enumerate(encoded):
        (CORPUS / f"seed-avro-{n}").write_bytes(b"\x00" + data)
    for n, event in enumerate(seeds):
        (CORPUS / f"seed-json-{n}").write_bytes(b"\x01" + json.dumps(event_to_json(event)).encode())
    (CORPUS / "seed-batch").write_bytes(b"\x02" + SEPARATOR.join([*encoded, b"junk"]))


def main() -> int:
    if atheris is None:
        print("note: atheris is not importable here; skipping the atheris harness")
        return 0
    _seed_corpus()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    args = [*sys.argv, f"-artifact_prefix={ARTIFACTS}/"]
    if not any(a.startswith("-max_total_time") or a.startswith("-runs") for a in args):
        args.append("-max_total_time=60")  # always bounded
    args.append(str(CORPUS))
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()  # exits the process when done
    return 0


if __name__ == "__main__":
    sys.exit(main())
