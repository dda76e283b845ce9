"""Unit tests for discovery's pure parts: applying watch events and diffing endpoint sets."""

from __future__ import annotations

from aetcd import rpc
from aetcd.rtypes import Event

from mesh.discovery import Changes, KeyEvent, apply_events, diff, snapshot, to_key_event
from mesh.registry import Instance, instance_key


def inst(iid: str, address: str = "h:1", **kw: object) -> Instance:
    return Instance("ocr", iid, address, **kw)  # type: ignore[arg-type]


def put(iid: str, address: str = "h:1", rev: int = 1, **kw: object) -> KeyEvent:
    i = inst(iid, address, **kw)
    return KeyEvent("put", i.key, i.to_json().encode(), rev)


def delete(iid: str, rev: int = 1) -> KeyEvent:
    return KeyEvent("delete", instance_key("ocr", iid), b"", rev)


def test_apply_events_puts_updates_and_deletes_in_order() -> None:
    a, b = inst("a"), inst("b")
    start = {a.key: a}
    after = apply_events(start, [put("b"), put("a", "h:2"), delete("b"), put("b", "h:3")])
    assert after == {a.key: inst("a", "h:2"), b.key: inst("b", "h:3")}
    assert start == {a.key: a}  # the input is not modified


def test_apply_events_delete_of_unknown_key_is_a_no_op() -> None:
    a = inst("a")
    assert apply_events({a.key: a}, [delete("zzz")]) == {a.key: a}


def test_malformed_put_removes_the_key() -> None:
    a = inst("a")
    broken = KeyEvent("put", a.key, b"{not json", 5)
    foreign = KeyEvent("put", "/ocrmesh/v1/services/ocr/a/b", inst("x").to_json().encode(), 6)
    assert apply_events({a.key: a}, [broken, foreign]) == {}


def test_snapshot_skips_malformed_entries() -> None:
    a = inst("a")
    kvs = [(a.key, a.to_json().encode()), (instance_key("ocr", "b"), b'{"no": "address"}')]
    assert snapshot(kvs) == {a.key: a}


def test_diff_reports_added_removed_updated() -> None:
    a, b, c = inst("a"), inst("b"), inst("c")
    b2 = inst("b", weight=10)
    changes = diff({a.key: a, b.key: b}, {b.key: b2, c.key: c})
    assert changes.added == {c.key: c}
    assert changes.removed == {a.key: a}
    assert changes.updated == {b.key: b2}
    assert changes
    assert not diff({a.key: a}, {a.key: inst("a")})
    assert not Changes()


def test_to_key_event_from_aetcd_events() -> None:
    a = inst("a")
    kv = rpc.KeyValue(key=a.key.encode(), value=a.to_json().encode(), mod_revision=42)
    assert to_key_event(Event(rpc.Event.PUT, kv)) == KeyEvent("put", a.key, kv.value, 42)
    gone = rpc.KeyValue(key=a.key.encode(), mod_revision=43)
    assert to_key_event(Event(rpc.Event.DELETE, gone)) == KeyEvent("delete", a.key, b"", 43)
