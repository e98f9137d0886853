"""Folder sync (apps/support/kb_sources.py, KnowledgeBase.sync_source, ``domainllm support sync``):
after a sync the knowledge base holds exactly the folder's current files, other sources untouched,
and a sync that fails half-way leaves the previous index serving."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from apps.support.documents import Document
from apps.support.kb import KnowledgeBase
from apps.support.kb_sources import API_SOURCE, folder_source, sync_folder
from core.errors import ConflictError, InvalidRequestError
from tests.unit.test_support_kb import HashEmbedder, cli_services

pytestmark = pytest.mark.unit


def write(folder: Path, rel: str, text: str) -> None:
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def state(kb: KnowledgeBase) -> dict[str, tuple[str | None, str | None, int]]:
    """doc_id -> (source, source_path, chunks), as the index holds them."""
    return {d.doc_id: (d.source, d.source_path, d.chunks) for d in kb.documents()}


def chunk_doc_ids(kb: KnowledgeBase) -> set[str]:
    root = kb.root
    generation = json.loads((root / "manifest.json").read_text())["generation"]
    lines = (root / f"gen-{generation:06d}" / "chunks.jsonl").read_text().splitlines()
    return {json.loads(line)["doc_id"] for line in lines}


@pytest.fixture
def kb(tmp_path: Path) -> KnowledgeBase:
    kb = KnowledgeBase(tmp_path / "kb", HashEmbedder())
    kb.warm_up()
    return kb


def test_sync_renames_edits_deletes_and_adds(kb: KnowledgeBase, tmp_path: Path) -> None:
    help_dir = tmp_path / "help"
    write(help_dir, "returns.md", "# Returns\n\nYou can return items within 30 days for a refund.\n")
    write(help_dir, "shipping.md", "# Shipping\n\nParcels leave the warehouse within two days.\n")
    write(help_dir, "guides/warranty.html", "<h1>Warranty</h1><p>Devices carry a two year warranty.</p>")
    # other sources, which a folder sync must never touch
    kb.upsert(Document(doc_id="api-note", title="Note", text="Uploaded over the API.", source=API_SOURCE))
    other = tmp_path / "other"
    write(other, "loyalty.md", "# Loyalty\n\nPoints never expire.\n")
    sync_folder(kb, other)

    scan, first = sync_folder(kb, help_dir)
    source = folder_source(help_dir)
    assert first.added == ["returns", "shipping", "warranty"] and first.deleted == []
    assert scan.files == {"guides/warranty.html": ["warranty"], "returns.md": ["returns"], "shipping.md": ["shipping"]}

    # rename one, edit one, delete one, add one
    (help_dir / "shipping.md").rename(help_dir / "delivery.md")
    write(help_dir, "returns.md", "# Returns\n\nYou can return items within 14 days; refunds take 5 working days.\n")
    (help_dir / "guides" / "warranty.html").unlink()
    write(help_dir, "gift-cards.txt", "Gift cards\n\nGift cards never expire and can be used online.")
    _, second = sync_folder(kb, help_dir)

    assert second.added == ["delivery", "gift-cards"]
    assert second.updated == ["returns"]
    assert second.deleted == ["shipping", "warranty"]
    assert second.unchanged == [] and second.kept == []
    mine = {d: v for d, v in state(kb).items() if v[0] == source}
    assert {d: v[1] for d, v in mine.items()} == {
        "delivery": "delivery.md",
        "gift-cards": "gift-cards.txt",
        "returns": "returns.md",
    }
    assert set(state(kb)) == {"delivery", "gift-cards", "returns", "api-note", "loyalty"}  # others untouched
    assert chunk_doc_ids(kb) == set(state(kb))  # and the chunks on disk are exactly those documents
    hits = kb.search("how many days to return items", k=10)
    texts = " ".join(h.text for h in hits if h.doc_id == "returns")
    assert "14 days" in texts and "30 days" not in texts
    assert all(h.doc_id not in {"shipping", "warranty"} for h in kb.search("warehouse warranty", k=10))

    # a second sync of an unchanged folder changes nothing, not even the generation
    generation = kb.generation
    _, third = sync_folder(kb, help_dir)
    assert third.unchanged == ["delivery", "gift-cards", "returns"] and not third.added + third.deleted
    assert kb.generation == generation


def test_a_file_that_fails_keeps_its_old_documents(kb: KnowledgeBase, tmp_path: Path) -> None:
    folder = tmp_path / "help"
    write(folder, "a.md", "# A\n\nAlpha text.\n")
    write(folder, "faq.csv", "question,answer\nWhen are you open?,9 to 5.\n")
    sync_folder(kb, folder)
    (folder / "faq.csv").write_bytes(b"question,answer\ncaf\xe9,latin-1\n")  # not UTF-8 any more
    scan, result = sync_folder(kb, folder)
    assert [f.path for f in scan.failures] == ["faq.csv"] and "UTF-8" in scan.failures[0].reason
    assert result.kept == [next(d for d in state(kb) if d.startswith("faq-"))]
    assert len(state(kb)) == 2


def test_an_empty_folder_needs_allow_empty(kb: KnowledgeBase, tmp_path: Path) -> None:
    folder = tmp_path / "help"
    write(folder, "a.md", "# A\n\nAlpha text.\n")
    sync_folder(kb, folder)
    (folder / "a.md").unlink()
    with pytest.raises(InvalidRequestError, match="allow"):
        sync_folder(kb, folder)
    assert set(state(kb)) == {"a"}
    _, result = sync_folder(kb, folder, allow_empty=True)
    assert result.deleted == ["a"] and state(kb) == {}
    with pytest.raises(InvalidRequestError, match="no such folder"):
        sync_folder(kb, tmp_path / "missing")


def test_a_doc_id_held_by_another_source_is_a_failed_file(kb: KnowledgeBase, tmp_path: Path) -> None:
    kb.upsert(Document(doc_id="returns", title="Returns", text="From the API.", source=API_SOURCE))
    folder = tmp_path / "help"
    write(folder, "returns.md", "# Returns\n\nFrom the folder.\n")
    write(folder, "other.md", "# Other\n\nFine.\n")
    scan, result = sync_folder(kb, folder)
    assert [f.path for f in scan.failures] == ["returns.md"] and "held by api" in scan.failures[0].reason
    assert result.added == ["other"]
    assert kb.get("returns").text == "From the API."  # type: ignore[union-attr]
    with pytest.raises(ConflictError):  # the KB itself refuses too (a race with another writer)
        kb.sync_source(
            folder_source(folder),
            [Document(doc_id="returns", title="R", text="x").with_source(folder_source(folder), "returns.md")],
        )


def test_a_failure_half_way_leaves_the_previous_index_serving(kb: KnowledgeBase, tmp_path: Path) -> None:
    folder = tmp_path / "help"
    write(folder, "a.md", "# A\n\nAlpha text about refunds.\n")
    write(folder, "b.md", "# B\n\nBravo text about parcels.\n")
    sync_folder(kb, folder)
    before = (kb.generation, state(kb), [h.chunk_id for h in kb.search("refunds", k=5)])
    manifest = (kb.root / "manifest.json").read_text()

    class Broken(HashEmbedder):
        def embed(self, texts: list[str], *, normalize: bool = True) -> np.ndarray:
            if any("Charlie" in t for t in texts):
                raise RuntimeError("the embedder died half-way")
            return super().embed(texts, normalize=normalize)

    kb.embedder = Broken()
    (folder / "a.md").unlink()
    write(folder, "c.md", "# C\n\nCharlie text.\n")
    with pytest.raises(RuntimeError, match="half-way"):
        sync_folder(kb, folder)
    assert (kb.generation, state(kb), [h.chunk_id for h in kb.search("refunds", k=5)]) == before
    assert (kb.root / "manifest.json").read_text() == manifest
    reopened = KnowledgeBase(kb.root, HashEmbedder())
    assert set(state(reopened)) == {"a", "b"}


def test_cli_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from domainllm import support as cli

    cli_services(monkeypatch, tmp_path)
    folder = tmp_path / "help"
    write(folder, "a.md", "# A\n\nAlpha.\n")
    write(folder, "b.md", "# B\n\nBravo.\n")
    kb_dir = tmp_path / "kb"
    runner = CliRunner()
    first = runner.invoke(cli.app, ["sync", str(folder), "--kb-dir", str(kb_dir)])
    assert first.exit_code == 0, first.output
    (folder / "b.md").unlink()
    second = runner.invoke(cli.app, ["sync", str(folder), "--kb-dir", str(kb_dir)])
    output = " ".join(second.output.split())
    assert second.exit_code == 0 and "deleted b" in output and "deleted 1" in output
    assert {d.doc_id for d in KnowledgeBase(kb_dir, HashEmbedder()).documents()} == {"a"}
    (folder / "a.md").unlink()
    refused = runner.invoke(cli.app, ["sync", str(folder), "--kb-dir", str(kb_dir)])
    assert refused.exit_code == 2 and "--allow-empty" in " ".join(refused.output.split())
    listed = runner.invoke(cli.app, ["list", "--kb-dir", str(kb_dir)])
    assert listed.exit_code == 0 and "a.md" in listed.output
