"""The kernel-maintainers corpus: MAINTAINERS pattern rules, and the builder on a miniature
package (the kernel-docs fixture tree plus a hand-written MAINTAINERS)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from conftest import build_linux_doc_deb

from longdoc import data, maintainers
from longdoc.maintainers import Entry, Matcher, parse_maintainers, pattern_matches

FIXTURE = Path(__file__).parent / "fixtures" / "kernel_docs" / "Documentation"

MAINTAINERS = """\
List of maintainers

Descriptions of section entries and preferred order
---------------------------------------------------

\tF: *Files* and directories wildcard patterns.
\t   F:\tdrivers/net/\tall files in and below drivers/net

Maintainers List
----------------

.. note:: When reading this list, please look for the most precise areas
          first.

ALSA CORE
M:	Someone <someone@example.invalid>
F:	Documentation/sound/alsa.rst
F:	Documentation/sound/hda.rst

BONDING DRIVER
F:	Documentation/networking/bonding.rst

DOCUMENTATION
F:	Documentation/
X:	Documentation/devicetree/

HARDWARE MONITORING
F:	Documentation/hwmon
X:	Documentation/hwmon/fan.rst

NETWORKING
F:	Documentation/networking/
F:	net/

SOUND
F:	Documentation/sound/*

THE REST
F:	*
F:	*/

USB AND MIDI
N:	(usb|midi)\\.rst
"""


def _members() -> list[tuple[str, bytes]]:
    return [
        (src.relative_to(FIXTURE).as_posix(), gzip.compress(src.read_bytes(), mtime=0))
        for src in sorted(FIXTURE.rglob("*.rst"))
    ]


def test_trailing_slash_covers_the_directory_and_below():
    assert pattern_matches("Documentation/net/", "Documentation/net/a.rst")
    assert pattern_matches("Documentation/net/", "Documentation/net/x/y/b.rst")
    assert not pattern_matches("Documentation/net/", "Documentation/netx/a.rst")
    assert not pattern_matches("Documentation/net/", "Documentation/a.rst")


def test_star_stays_in_its_directory():
    assert pattern_matches("Documentation/hwmon/*", "Documentation/hwmon/lm75.rst")
    assert not pattern_matches("Documentation/hwmon/*", "Documentation/hwmon/sub/lm75.rst")
    assert pattern_matches("*/net/*", "drivers/net/foo.c")  # the header's own example
    assert not pattern_matches("*/net/*", "drivers/net/sub/foo.c")
    assert not pattern_matches("*/net/*", "net/foo.c")
    assert pattern_matches("Documentation/hwmon/lm7?.rst", "Documentation/hwmon/lm75.rst")
    assert pattern_matches("Documentation/hwmon/lm7[05].rst", "Documentation/hwmon/lm75.rst")
    assert not pattern_matches("Documentation/hwmon/lm7[01].rst", "Documentation/hwmon/lm75.rst")
    # "." is literal, not a regex wildcard
    assert not pattern_matches("Documentation/a.rst", "Documentation/axrst")
    # "THE REST": "*" alone is the top level only, "*/" everything
    assert not pattern_matches("*", "Documentation/a.rst")
    assert pattern_matches("*/", "Documentation/sub/a.rst")


def test_a_directory_named_without_slash_covers_everything_below():
    dirs = maintainers.directories_of(["Documentation/sound/x/y.rst"])
    assert dirs == {"Documentation", "Documentation/sound", "Documentation/sound/x"}
    assert pattern_matches("Documentation/sound", "Documentation/sound/x/y.rst", dirs)
    assert pattern_matches("Documentation/sound", "Documentation/sound/a.rst", dirs)
    # not known as a directory: a file pattern, at its own depth only
    assert not pattern_matches("Documentation/sound", "Documentation/sound/a.rst")
    assert pattern_matches("Documentation/sound.rst", "Documentation/sound.rst", dirs)


def test_exclusions_come_first_and_regexes_search_the_path():
    entry = Entry("NET", files=("net/",), excludes=("net/ipv6/",), regexes=("[^a-z]tegra",))
    matcher = Matcher([entry], frozenset())
    assert matcher.covers(entry, "net/ipv4/tcp.c")
    assert not matcher.covers(entry, "net/ipv6/tcp.c")
    assert matcher.covers(entry, "drivers/gpu/tegra/x.c")  # N: anywhere in the path
    assert not matcher.covers(entry, "drivers/gpu/integra.c")
    excluded = Entry("X", files=("net/",), excludes=("net/",), regexes=("net",))
    assert not Matcher([excluded], frozenset()).covers(excluded, "net/a.c")
    bad = Entry("BAD", regexes=("(unclosed",))
    assert Matcher([bad], frozenset()).bad_regexes == ["(unclosed"]


def test_parse_maintainers_skips_the_header():
    entries = {e.title: e for e in parse_maintainers(MAINTAINERS)}
    assert sorted(entries) == [
        "ALSA CORE",
        "BONDING DRIVER",
        "DOCUMENTATION",
        "HARDWARE MONITORING",
        "NETWORKING",
        "SOUND",
        "THE REST",
        "USB AND MIDI",
    ]
    assert entries["DOCUMENTATION"].excludes == ("Documentation/devicetree/",)
    assert entries["NETWORKING"].files == ("Documentation/networking/", "net/")
    assert entries["USB AND MIDI"].regexes == ("(usb|midi)\\.rst",)


EXPECTED_LABELS = {
    "ALSA CORE": 2,
    "HARDWARE MONITORING": 3,  # lm75, it87, voltage (fan excluded, the copy deduplicated)
    "NETWORKING": 4,
    "SOUND": 4,
    "USB AND MIDI": 2,
}


def test_collect_labels_drops_broad_and_small_entries(tmp_path):
    docs, stats, entries = maintainers.collect_kernel_maintainers(
        _members(), MAINTAINERS, min_docs=2, max_fraction=0.5
    )
    assert entries["too_broad"] == {"DOCUMENTATION": 14, "THE REST": 14}
    assert entries["too_small"] == 1  # BONDING DRIVER
    labels = {d["path"]: d["labels"] for d in docs}
    assert labels["sound/alsa.rst"] == ["ALSA CORE", "SOUND"]
    assert labels["sound/usb.rst"] == ["SOUND", "USB AND MIDI"]
    assert labels["networking/bonding.rst"] == ["NETWORKING"]
    assert "hwmon/fan.rst" not in labels and "misc/only.rst" not in labels
    assert stats["only_dropped_entries"] == 3  # fan, misc/only, overview (THE REST only)
    assert stats["folder_devicetree"] == 1 and stats["folder_translations"] == 1
    assert stats["duplicate"] == 1 and stats["index_page"] == 1
    assert all(d["split"] == data.split_of(d["path"]) for d in docs)

    manifest = maintainers.write_maintainers_corpus(docs, tmp_path / "c", {}, stats, entries, {})
    assert manifest["labels"] == EXPECTED_LABELS
    assert manifest["label_cardinality"] == {"1": 7, "2": 4}
    assert sum(manifest["splits"].values()) == manifest["documents"] == 11


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    """A real .deb in the layout of linux-doc-6.1: the fixture tree and MAINTAINERS.gz."""
    files = {f"Documentation/{rel}.gz": gz for rel, gz in _members()}
    files["MAINTAINERS.gz"] = gzip.compress(MAINTAINERS.encode(), mtime=0)
    return build_linux_doc_deb(tmp_path_factory.mktemp("pkg"), files)


def test_cli_builds_jsonl_splits_with_a_stable_checksum(deb, tmp_path):
    from longdoc.cli import main

    def build(output: Path) -> dict:
        argv = ["data", "kernel-maintainers", "--output", str(output), "--deb", str(deb)]
        assert main([*argv, "--min-docs", "2", "--max-fraction", "0.5"]) == 0
        return json.loads((output / "manifest.json").read_text())

    manifest = build(tmp_path / "a")
    assert manifest["corpus"] == "kernel-maintainers"
    assert manifest["problem"] == "multi-label"
    assert manifest["source"]["package"] == deb.name and len(manifest["source"]["sha256"]) == 64
    assert manifest["labels"] == EXPECTED_LABELS
    assert manifest["rules"]["min_docs_per_label"] == 2
    assert manifest["rules"]["max_entry_fraction"] == 0.5
    assert set(manifest["entries"]["too_broad"]) == {"DOCUMENTATION", "THE REST"}
    rows = {}
    for split in data.SPLITS:
        path = tmp_path / "a" / f"{split}.jsonl"
        lines = path.read_text().splitlines()
        assert len(lines) == manifest["splits"][split]
        ids = [json.loads(line)["id"] for line in lines]
        assert ids == sorted(ids)
        if lines:
            examples = data.read_dataset(path, problem="multi-label")
            for e in examples:
                assert data.split_of(e.id) == split
                rows[e.id] = e.labels
    assert rows["sound/hda.rst"] == ("ALSA CORE", "SOUND")
    assert len(rows) == 11
    # a rebuild is identical; the trainer finds the manifest next to a split file
    assert build(tmp_path / "b")["checksum"] == manifest["checksum"]
    from longdoc.training.trainer import find_manifest

    assert find_manifest(tmp_path / "a" / "train.jsonl")["checksum"] == manifest["checksum"]


def test_a_package_without_maintainers_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(
        maintainers, "iter_deb_members", lambda deb, select: iter([("a/b.rst", b"x")])
    )
    with pytest.raises(data.DataError, match="no MAINTAINERS.gz"):
        maintainers.read_package(tmp_path / "x.deb")
