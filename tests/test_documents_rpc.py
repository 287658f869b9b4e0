"""Documents (rule 1) through a real server with two workers: upload checks, storage, review, propagation."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
import time
from typing import Any

import grpc
import pytest

from callgate.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2, decisions_pb2_grpc
from loadtest.process import free_port
from server.rules.documents import due_date

from .serving import EXAMPLE, Server, wait_for
from .test_documents import bilevel_png, encode, scan

DOC = json.loads(EXAMPLE.read_text())
NUMBER = "+14155550100"               # requires_documents in the example
TUESDAY_1030_LA = 1796149800          # working hours for NUMBER


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("data"), listen=f"127.0.0.1:{free_port()}", workers=2)
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def admin(server):
    with server.channel() as channel:
        yield admin_pb2_grpc.AdminStub(channel)


def upload(admin: Any, *files: tuple[str, bytes], number: str = NUMBER) -> Any:
    return admin.UploadDocuments(admin_pb2.UploadDocumentsRequest(
        tenant="acme", number=number, files=[admin_pb2.DocumentUpload(name=n, content=c) for n, c in files]),
        timeout=60)


def refusal(fn: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code(), err.value.details()


def reasons_by_worker(address: str, tries: int = 30) -> dict[int, int]:
    """worker pid -> the Inbound reason for a call to NUMBER, over fresh connections (they spread over workers)."""
    seen: dict[int, int] = {}
    for _ in range(tries):
        with grpc.insecure_channel(address) as channel:
            pid = admin_pb2_grpc.AdminStub(channel).Stats(admin_pb2.StatsRequest(tenant="acme"), timeout=5).pid
            d = decisions_pb2_grpc.DecisionsStub(channel).Inbound(decisions_pb2.InboundRequest(
                tenant="acme", caller="+12125550000", called=NUMBER, at=TUESDAY_1030_LA), timeout=5)
            seen[pid] = d.reason
    return seen


def test_bad_images_are_refused_and_nothing_is_kept(server: Server, admin: Any) -> None:
    cases = [
        (("wide.png", encode(scan((2001, 100)), "PNG")), "2001 × 100 px"),
        (("tall.jpg", encode(scan((100, 2001)), "JPEG")), "100 × 2001 px"),
        (("bomb.png", bilevel_png(30_000, 30_000)), "30000 × 30000 px"),
        (("notes.png", b"hello, this is not an image\n"), "notes.png: not an image"),
        (("../../etc/passwd", b"root:x:0:0\n"), "passwd: not an image"),
    ]
    for file, words in cases:
        code, text = refusal(lambda f=file: upload(admin, ("ok.png", encode(scan((50, 50)), "PNG")), f))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and words in text, text
    code, text = refusal(lambda: upload(admin))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "at least one" in text
    code, text = refusal(lambda: upload(admin, ("a.png", encode(scan((50, 50)), "PNG")), number="+19995550000"))
    assert code == grpc.StatusCode.NOT_FOUND
    docs = server.data_dir / "documents"
    assert not docs.exists() or not any(p.is_file() for p in docs.rglob("*"))      # the good file was not kept
    assert admin.ListDocuments(admin_pb2.ListDocumentsRequest(tenant="acme"), timeout=10).sets == []


def test_upload_review_and_every_worker_follows_without_a_push(server: Server, admin: Any) -> None:
    address = server.address
    wait_for(lambda: len(reasons_by_worker(address)) == 2, timeout=20)
    assert set(reasons_by_worker(address).values()) == {decisions_pb2.DOCUMENTS_PENDING}
    version = admin.GetSettings(admin_pb2.GetSettingsRequest(tenant="acme"), timeout=10).version

    front = encode(scan((2000, 1400)), "PNG")
    back = encode(scan((1400, 2000)), "JPEG", quality=80)
    first = upload(admin, ("passport front.png", front), ("back.jpg", back))
    today = dt.datetime.now(dt.UTC).date()
    assert (first.status, first.number, first.due_on) == ("pending", NUMBER, due_date(today).isoformat())
    assert [(f.name, f.format, f.width, f.height) for f in first.files] == [
        ("passport front.png", "PNG", 2000, 1400), ("back.jpg", "JPEG", 1400, 2000)]
    data_dir = server.data_dir
    sha = hashlib.sha256(front).hexdigest()
    assert first.files[0].sha256 == sha
    assert (data_dir / "documents" / sha[:2] / sha[2:4] / sha).read_bytes() == front    # content-addressed

    code, text = refusal(lambda: admin.ReviewDocuments(admin_pb2.ReviewDocumentsRequest(set_id=first.id), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "reason" in text
    rejected = admin.ReviewDocuments(admin_pb2.ReviewDocumentsRequest(
        set_id=first.id, reason="the back side is blurred", reviewer="ops-1"), timeout=10)
    assert (rejected.status, rejected.reason, rejected.decided_by) == ("rejected", "the back side is blurred", "ops-1")
    # a rejected number says so (not "pending"), in every worker within a poll, with the operator's words
    wait_for(lambda: set(reasons_by_worker(address, tries=20).values()) == {decisions_pb2.DOCUMENTS_REJECTED},
             timeout=5)
    with grpc.insecure_channel(address) as channel:
        d = decisions_pb2_grpc.DecisionsStub(channel).Inbound(decisions_pb2.InboundRequest(
            tenant="acme", caller="+12125550000", called=NUMBER, at=TUESDAY_1030_LA, explain=True), timeout=5)
    assert (d.reason, d.sip_status) == (decisions_pb2.DOCUMENTS_REJECTED, 403)
    assert "documents were rejected" in d.rule and "rejected: the back side is blurred" in d.rule

    second = upload(admin, ("back-again.jpg", back), ("passport front.png", front))     # a rejected set again
    # a new upload is pending again
    wait_for(lambda: set(reasons_by_worker(address, tries=20).values()) == {decisions_pb2.DOCUMENTS_PENDING},
             timeout=5)
    approved = admin.ReviewDocuments(admin_pb2.ReviewDocumentsRequest(set_id=second.id, approve=True), timeout=10)
    start = time.monotonic()
    assert approved.status == "approved"
    # generous bound for a noisy machine: the workers poll the store every 0.1 s in tests
    wait_for(lambda: set(reasons_by_worker(address, tries=20).values()) == {decisions_pb2.OK}, timeout=5)
    print(f"approval in force in both workers after {time.monotonic() - start:.3f} s")
    # approvals are not settings: no new version, and a new version keeps them
    assert admin.GetSettings(admin_pb2.GetSettingsRequest(tenant="acme"), timeout=10).version == version
    doc = json.loads(EXAMPLE.read_text())
    doc["blacklist"].append("+14155552222")
    admin.PushSettings(admin_pb2.PushSettingsRequest(document=json.dumps(doc).encode()), timeout=60)
    wait_for(lambda: set(reasons_by_worker(address, tries=20).values()) == {decisions_pb2.OK}, timeout=5)
    listed = admin.ListDocuments(admin_pb2.ListDocumentsRequest(tenant="acme", status="approved"), timeout=10)
    assert [s.id for s in listed.sets] == [second.id]

    # a set is reviewed once: a second review is refused, naming the first, and changes nothing
    for approve, reason in ((False, "forged"), (True, "")):
        code, text = refusal(lambda a=approve, r=reason: admin.ReviewDocuments(admin_pb2.ReviewDocumentsRequest(
            set_id=second.id, approve=a, reason=r, reviewer="ops-9"), timeout=10))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert f"document set {second.id} was already approved by operator at " in text
    listed = admin.ListDocuments(admin_pb2.ListDocumentsRequest(tenant="acme", status="approved"), timeout=10)
    assert [(s.id, s.decided_by) for s in listed.sets] == [(second.id, "operator")]
    assert set(reasons_by_worker(address, tries=20).values()) == {decisions_pb2.OK}
    with sqlite3.connect(data_dir / "callgate.sqlite") as conn:
        assert conn.execute("SELECT count(*) FROM document_files").fetchone()[0] == 4
    assert len(list((data_dir / "documents").rglob("*.*"))) == 0          # no temp files left
    assert len([p for p in (data_dir / "documents").rglob("*") if p.is_file()]) == 2   # two distinct images
