"""The knowledge base (apps/support/kb.py) and its CLI, on a deterministic hashing embedder."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from apps.support.documents import Document, Section
from apps.support.kb import FusionConfig, KnowledgeBase, minmax, rrf_fuse, score_fuse
from core.errors import InvalidRequestError

pytestmark = pytest.mark.unit


class HashEmbedder:
    """Unit vectors from hashed words: texts sharing words are close. Counts what it embeds."""

    def __init__(self, dim: int = 256, delay_s: float = 0.0) -> None:
        self.dim = dim
        self.delay_s = delay_s
        self.embedded: list[str] = []
        self._lock = threading.Lock()

    def embed(self, texts: list[str], *, normalize: bool = True) -> np.ndarray:
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._lock:
            self.embedded.extend(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)  # [n, dim]
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
                out[row, h % self.dim] += 1.0
            norm = float(np.linalg.norm(out[row]))
            out[row] = out[row] / norm if norm > 0 else out[row]
        return out


ARTICLES = [
    Document(doc_id="returns", title="Returns", text="You can return any item within 30 days for a full refund."),
    Document(doc_id="shipping", title="Shipping", text="Orders ship within two days. Express delivery is available."),
    Document(doc_id="warranty", title="Warranty", text="Devices carry a two year warranty against defects."),
    Document(doc_id="payment", title="Payment", text="We accept credit cards, PayPal and invoice ZX-42 for business."),
]
FAQS = [
    Document(
        doc_id="faq-pin",
        title="Reset PIN",
        text="How do I reset my card PIN?\n\nOpen the app and choose Card, then PIN.",
        kind="faq",
        question="How do I reset my card PIN?",
        answer="Open the app and choose Card, then PIN.",
    ),
    Document(
        doc_id="faq-hours",
        title="Opening hours",
        text="When is the store open?\n\nMonday to Friday, 9 to 5.",
        kind="faq",
        question="When is the store open?",
        answer="Monday to Friday, 9 to 5.",
    ),
]


@pytest.fixture
def embedder() -> HashEmbedder:
    return HashEmbedder()


@pytest.fixture
def kb(tmp_path: Path, embedder: HashEmbedder) -> KnowledgeBase:
    kb = KnowledgeBase(tmp_path / "kb", embedder)
    kb.warm_up()
    kb.upsert_many(ARTICLES + FAQS)
    return kb


# ---- upsert, delete, persistence ---------------------------------------------------------------


def test_upsert_added_unchanged_updated(tmp_path: Path, embedder: HashEmbedder) -> None:
    kb = KnowledgeBase(tmp_path / "kb", embedder)
    kb.warm_up()
    kb.warm_up()  # safe twice
    assert len(kb) == 0 and kb.search("refund") == []
    first = kb.upsert(ARTICLES[0])
    assert first.to_dict() == {"doc_id": "returns", "status": "added", "chunks": 1}
    same = Document(doc_id="returns", title="Returns", text=ARTICLES[0].text)
    assert kb.upsert(same).status == "unchanged"
    changed = Document(doc_id="returns", title="Returns", text="Returns are accepted within 14 days only.")
    assert kb.upsert(changed).status == "updated"
    assert len(kb) == 1  # the old chunk was replaced, not kept beside the new one
    (hit,) = kb.search("returns days", k=3)
    assert "14 days" in hit.text
    assert kb.get("returns") == changed


def test_unchanged_batch_does_not_rebuild(kb: KnowledgeBase) -> None:
    manifest = json.loads((kb.root / "manifest.json").read_text())
    results = kb.upsert_many(ARTICLES)
    assert {r.status for r in results} == {"unchanged"}
    assert json.loads((kb.root / "manifest.json").read_text())["generation"] == manifest["generation"]


def test_delete(kb: KnowledgeBase) -> None:
    before = len(kb)
    assert kb.delete("warranty") is True
    assert kb.delete("warranty") is False
    assert kb.get("warranty") is None and len(kb) == before - 1
    assert all(h.doc_id != "warranty" for h in kb.search("two year warranty defects", k=10))
    for doc in list(kb.documents()):
        kb.delete(doc.doc_id)
    assert len(kb) == 0 and kb.search("anything") == [] and kb.faq_match("open?") is None


def test_reload_from_disk_without_re_embedding(kb: KnowledgeBase, embedder: HashEmbedder) -> None:
    expected = [(h.chunk_id, round(h.score, 5)) for h in kb.search("refund within 30 days", k=3)]
    fresh_embedder = HashEmbedder()
    again = KnowledgeBase(kb.root, fresh_embedder)
    again.warm_up()
    assert len(again) == len(kb)
    assert sorted(d.doc_id for d in again.documents()) == sorted(d.doc_id for d in kb.documents())
    assert fresh_embedder.embedded == []  # vectors and indexes came from disk
    assert [(h.chunk_id, round(h.score, 5)) for h in again.search("refund within 30 days", k=3)] == expected
    assert again.get("faq-pin") == FAQS[0]
    info = {i.doc_id: i for i in again.documents()}["returns"]
    assert info.chunks == 1 and info.kind == "article" and len(info.content_hash) == 64


def test_rebuild_embeds_only_new_text(kb: KnowledgeBase, embedder: HashEmbedder) -> None:
    embedder.embedded.clear()
    new = Document(doc_id="gift", title="Gift cards", text="Gift cards never expire.")
    kb.upsert(new)
    assert embedder.embedded == ["Gift cards\nGift cards never expire."]


def test_generations_are_swapped_and_pruned(kb: KnowledgeBase) -> None:
    for i in range(3):
        kb.upsert(Document(doc_id=f"extra-{i}", title="Extra", text=f"extra text number {i}"))
    manifest = json.loads((kb.root / "manifest.json").read_text())
    gens = sorted(p.name for p in kb.root.glob("gen-*"))
    assert gens == [f"gen-{manifest['generation'] - 1:06d}", f"gen-{manifest['generation']:06d}"]
    assert manifest["docs"] == len(ARTICLES) + len(FAQS) + 3 and manifest["dense_index"] == "IndexFlatIP"
    assert not list(kb.root.glob("*.tmp"))


def test_changed_chunking_rebuilds_on_warm_up(kb: KnowledgeBase) -> None:
    long_doc = Document(doc_id="long", title="Long", text=" ".join(["word"] * 120))  # 120 word pieces
    kb.upsert(long_doc)
    assert {i.doc_id: i.chunks for i in kb.documents()}["long"] == 1
    small = KnowledgeBase(kb.root, HashEmbedder(), chunk_tokens=64, overlap_tokens=10)
    small.warm_up()
    assert {i.doc_id: i.chunks for i in small.documents()}["long"] > 1
    chunking = json.loads((kb.root / "manifest.json").read_text())["chunking"]
    assert chunking == {"chunk_tokens": 64, "overlap_tokens": 10, "tokenizer": "minilm-wordpiece"}


def test_refresh_sees_another_writer(kb: KnowledgeBase) -> None:
    reader = KnowledgeBase(kb.root, HashEmbedder())
    reader.warm_up()
    assert reader.refresh() is False
    kb.upsert(Document(doc_id="gift", title="Gift cards", text="Gift cards never expire."))
    assert reader.refresh() is True
    assert reader.get("gift") is not None


def test_two_writers_on_one_folder_keep_each_others_documents(kb: KnowledgeBase) -> None:
    other = KnowledgeBase(kb.root, HashEmbedder())  # as if a CLI ingest ran beside the server
    other.upsert(Document(doc_id="from-cli", title="CLI", text="Written by another process."))
    kb.upsert(Document(doc_id="from-server", title="Server", text="Written by the server."))
    ids = {d.doc_id for d in KnowledgeBase(kb.root, HashEmbedder()).documents()}
    assert {"from-cli", "from-server", "returns"} <= ids


def test_hnsw_above_the_threshold(tmp_path: Path) -> None:
    kb = KnowledgeBase(tmp_path / "kb", HashEmbedder(), ann_threshold=3)
    kb.upsert_many(ARTICLES + FAQS)
    assert json.loads((kb.root / "manifest.json").read_text())["dense_index"] == "IndexHNSWFlat"
    assert kb.search("two year warranty defects", k=1, mode="dense")[0].doc_id == "warranty"
    again = KnowledgeBase(kb.root, HashEmbedder(), ann_threshold=3)
    assert again.search("two year warranty defects", k=1, mode="dense")[0].doc_id == "warranty"


# ---- search ------------------------------------------------------------------------------------


def test_search_modes_and_hit_fields(kb: KnowledgeBase) -> None:
    for mode in ("dense", "bm25", "hybrid"):
        hits = kb.search("return an item for a refund", k=3, mode=mode)
        assert hits[0].doc_id == "returns", mode
        assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
        assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
    dense = kb.search("refund", mode="dense")[0]
    assert dense.bm25_score is None and dense.dense_score == pytest.approx(dense.score)
    lexical = kb.search("refund", mode="bm25")
    assert lexical[0].dense_score is None and lexical[0].bm25_score == pytest.approx(lexical[0].score)
    assert all(h.bm25_score is not None and h.bm25_score > 0 for h in lexical)  # only chunks with a query term
    hybrid = kb.search("refund", mode="hybrid")[0]
    assert hybrid.dense_score is not None and hybrid.bm25_score is not None
    assert (hybrid.title, hybrid.url, hybrid.chunk_id) == ("Returns", None, "returns#0")


def test_bm25_finds_an_exact_code(kb: KnowledgeBase) -> None:
    assert kb.search("ZX-42", k=1, mode="bm25")[0].doc_id == "payment"
    assert kb.search("ZX-42", k=1, mode="hybrid")[0].doc_id == "payment"
    assert kb.search("qwertyuiop", mode="bm25") == []  # no query term in the index


def test_search_validation(kb: KnowledgeBase) -> None:
    with pytest.raises(InvalidRequestError, match="mode"):
        kb.search("refund", mode="fuzzy")
    with pytest.raises(InvalidRequestError, match="k must be"):
        kb.search("refund", k=0)
    with pytest.raises(InvalidRequestError, match="empty"):
        kb.search("   ")


def test_rrf_fuse_weights_and_ranks() -> None:
    fused = rrf_fuse([([1, 2, 3], 1.0), ([3, 1], 1.0)], rrf_k=60)
    assert fused[1] == pytest.approx(1 / 61 + 1 / 62)
    assert fused[3] == pytest.approx(1 / 63 + 1 / 61)
    assert fused[2] == pytest.approx(1 / 62)
    assert sorted(fused, key=lambda i: -fused[i]) == [1, 3, 2]
    weighted = rrf_fuse([([1, 2], 3.0), ([2, 1], 1.0)], rrf_k=60)
    assert weighted[1] > weighted[2]


def test_score_fuse_normalises_each_retriever() -> None:
    assert minmax(np.array([2.0, 4.0, 3.0])).tolist() == [0.0, 1.0, 0.5]
    assert minmax(np.array([5.0, 5.0])).tolist() == [0.0, 0.0]
    fused = score_fuse([7, 8, 9], np.array([0.9, 0.8, 0.1]), np.array([0.0, 10.0, 5.0]), 0.5, 0.5)
    assert fused == pytest.approx({7: 0.5, 8: 0.5 * 0.875 + 0.5, 9: 0.25})


def test_hybrid_rrf_mode_and_fusion_validation(tmp_path: Path, embedder: HashEmbedder) -> None:
    kb = KnowledgeBase(tmp_path / "kb", embedder, fusion=FusionConfig(method="rrf", dense_weight=1, bm25_weight=1))
    kb.upsert_many(ARTICLES)
    hits = kb.search("return an item for a refund", k=2)
    assert hits[0].doc_id == "returns"
    assert hits[0].score == pytest.approx(2 / 61)  # first in both rankings
    with pytest.raises(ValueError):
        FusionConfig(method="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        FusionConfig(dense_weight=0, bm25_weight=0)


def test_faq_match(kb: KnowledgeBase) -> None:
    match = kb.faq_match("how do I reset my PIN")
    assert match is not None and match.doc_id == "faq-pin"
    assert match.answer == "Open the app and choose Card, then PIN."
    assert 0.5 < match.score <= 1.0
    exact = kb.faq_match("When is the store open?")
    assert exact is not None and exact.doc_id == "faq-hours" and exact.score == pytest.approx(1.0, abs=1e-5)


def test_faq_match_without_faqs(tmp_path: Path, embedder: HashEmbedder) -> None:
    kb = KnowledgeBase(tmp_path / "kb", embedder)
    kb.upsert_many(ARTICLES)
    assert kb.faq_match("how do I reset my PIN") is None


def test_searches_keep_answering_during_a_rebuild(tmp_path: Path) -> None:
    # each embedding batch takes 50 ms: the rebuild below takes ~0.5 s; wide, so "refund" collides with no bulk word
    slow = HashEmbedder(dim=4096, delay_s=0.05)
    kb = KnowledgeBase(tmp_path / "kb", slow)
    kb.upsert_many(ARTICLES)
    kb.search("refund")  # the query vector is cached from here on
    many = [
        Document(doc_id=f"bulk-{i}", title=f"Bulk {i}", text=f"Unrelated bulk article {i} about item {i * 7}.")
        for i in range(600)
    ]
    results: list[str] = []
    errors: list[BaseException] = []
    writer_done = threading.Event()

    def writer() -> None:
        try:
            kb.upsert_many(many)
        finally:
            writer_done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    while not writer_done.is_set():
        try:
            hits = kb.search("refund", k=1)
            results.append(hits[0].doc_id)
        except BaseException as exc:
            errors.append(exc)
        time.sleep(0.005)
    thread.join()
    assert errors == []
    assert len(results) >= 20  # searches ran while the writer was embedding and indexing
    assert set(results) == {"returns"}
    assert len(kb) == len(ARTICLES) + 600


def test_searches_and_upserts_from_many_threads(tmp_path: Path, embedder: HashEmbedder) -> None:
    kb = KnowledgeBase(tmp_path / "kb", embedder)
    kb.upsert_many(ARTICLES)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(5):
                kb.upsert(Document(doc_id=f"t{n}-{i}", title="T", text=f"thread {n} doc {i}"))
                assert kb.search("refund", k=1)[0].doc_id == "returns"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(kb.documents()) == len(ARTICLES) + 20
    again = KnowledgeBase(kb.root, HashEmbedder())
    assert len(again.documents()) == len(ARTICLES) + 20


def test_sections_are_searchable_and_cited(tmp_path: Path, embedder: HashEmbedder) -> None:
    doc = Document(
        doc_id="care",
        title="Product care",
        text="...",
        sections=[Section("Cleaning", "Wipe with a dry cloth."), Section("Storage", "Keep it somewhere cool.")],
    )
    kb = KnowledgeBase(tmp_path / "kb", embedder)
    kb.upsert(doc)
    hit = kb.search("storage", k=1)[0]
    assert (hit.section, hit.text) == ("Storage", "Keep it somewhere cool.")


# ---- CLI ---------------------------------------------------------------------------------------


def cli_services(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``domainllm support`` on a hashing embedder and a scratch KB folder (never the served one)."""
    from types import SimpleNamespace

    import domainllm.support
    from apps.support.settings import SupportSettings

    fake = SimpleNamespace(
        engine=HashEmbedder(), settings=SimpleNamespace(support=SupportSettings(kb_dir=tmp_path / "kb"))
    )
    monkeypatch.setattr(domainllm.support, "services", lambda: fake)


def test_cli_ingest_folder_reports_and_exits_1_on_a_bad_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from domainllm import support as cli

    cli_services(monkeypatch, tmp_path)
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "returns.md").write_text("# Returns\n\nReturn items within 30 days.\n")
    (docs / "sub" / "faq.csv").write_text("question,answer\nWhen are you open?,9 to 5.\n,broken\n")
    (docs / "manual.pdf").write_bytes(b"not a pdf at all")
    (docs / ".hidden.md").write_text("# Hidden\n\nignored")
    (docs / "image.png").write_bytes(b"\x89PNG")
    kb_dir = tmp_path / "kb"
    runner = CliRunner()
    result = runner.invoke(cli.app, ["ingest", str(docs), "--kb-dir", str(kb_dir)])
    output = " ".join(result.output.split())  # rich wraps lines at the terminal width
    assert result.exit_code == 1, output
    assert "failed manual.pdf: manual.pdf: not a PDF" in output
    assert "returns.md: added 1, updated 0, unchanged 0" in output
    assert "sub/faq.csv: added 1" in output and "skipped sub/faq.csv row 3" in output
    assert "2 documents" in output and "1 of 3 files failed" in output
    again = runner.invoke(cli.app, ["ingest", str(docs / "returns.md"), "--kb-dir", str(kb_dir)])
    assert again.exit_code == 0 and "unchanged 1" in again.output
    kb = KnowledgeBase(kb_dir, HashEmbedder())
    assert sorted(d.doc_id for d in kb.documents())[1] == "returns"
    assert kb.get("returns").url == "/help/returns"  # type: ignore[union-attr]
    info = {d.doc_id: d for d in kb.documents()}["returns"]
    assert (info.source, info.source_path) == (f"folder:{docs.resolve()}", "returns.md")
    found = runner.invoke(cli.app, ["search", "return items", "--k", "1", "--kb-dir", str(kb_dir)])
    assert found.exit_code == 0 and "returns" in found.output
    bad_mode = runner.invoke(cli.app, ["search", "x", "--mode", "nope", "--kb-dir", str(kb_dir)])
    assert bad_mode.exit_code == 2
    assert runner.invoke(cli.app, ["delete", "returns", "--kb-dir", str(kb_dir)]).exit_code == 0
    assert runner.invoke(cli.app, ["delete", "returns", "--kb-dir", str(kb_dir)]).exit_code == 2


def test_another_embedder_rebuilds_the_index(tmp_path: Path) -> None:
    """The embedder is a setting: a knowledge base written with one is re-embedded with the other,
    even when both give vectors of the same width."""
    first = HashEmbedder()
    first.embedder_id = "hash-a"  # type: ignore[attr-defined]
    KnowledgeBase(tmp_path / "kb", first).upsert_many(ARTICLES)
    second = HashEmbedder()
    second.embedder_id = "hash-b"  # type: ignore[attr-defined]
    kb = KnowledgeBase(tmp_path / "kb", second)
    kb.warm_up()
    assert len(second.embedded) >= len(ARTICLES)  # every chunk embedded again by the new one
    assert kb.search("refund", k=1)[0].doc_id == "returns"
    again = HashEmbedder()
    again.embedder_id = "hash-b"  # type: ignore[attr-defined]
    KnowledgeBase(tmp_path / "kb", again).warm_up()
    assert again.embedded == []  # the same embedder: nothing to redo


def test_documents_without_a_word_are_stored_and_searchable(tmp_path: Path) -> None:
    """A title "0" and text "0" (nothing BM25 can index) must not fail the upload (schemathesis found a 500)."""
    kb = KnowledgeBase(tmp_path / "kb", HashEmbedder())
    kb.upsert_many([Document(doc_id="zero", title="0", text="0 !")])
    assert [h.doc_id for h in kb.search("0", k=1)] == ["zero"]
    reopened = KnowledgeBase(tmp_path / "kb", HashEmbedder())
    reopened.warm_up()
    assert len(reopened) == 1
    reopened.upsert_many(ARTICLES)
    assert reopened.search("refund", k=1)[0].doc_id == "returns"


def test_cli_writes_a_tenants_own_knowledge_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--tenant``: the tenant's KB folder, as the server's ``apps_of(tenant)`` serves it; an unknown
    tenant, or --tenant with --kb-dir, is a usage error (exit 2) that writes nothing."""
    from types import SimpleNamespace

    import domainllm.support
    from domainllm import support as cli

    kbs = {"acme": KnowledgeBase(tmp_path / "acme-kb", HashEmbedder())}
    fake = SimpleNamespace(
        tenants=SimpleNamespace(get_tenant=lambda t: object() if t in kbs else None),
        apps_of=lambda t: SimpleNamespace(support=SimpleNamespace(kb=kbs[t])),
    )
    monkeypatch.setattr(domainllm.support, "services", lambda: fake)
    doc = tmp_path / "returns.md"
    doc.write_text("# Returns\n\nReturn items within 30 days.\n")
    runner = CliRunner()
    assert runner.invoke(cli.app, ["ingest", str(doc), "--tenant", "acme"]).exit_code == 0
    assert [d.doc_id for d in kbs["acme"].documents()] == ["returns"]
    ghost = runner.invoke(cli.app, ["ingest", str(doc), "--tenant", "ghost"])
    assert ghost.exit_code == 2 and "no tenant 'ghost'" in ghost.output
    both = runner.invoke(cli.app, ["ingest", str(doc), "--tenant", "acme", "--kb-dir", str(tmp_path / "x")])
    assert both.exit_code == 2 and not (tmp_path / "x").exists()
