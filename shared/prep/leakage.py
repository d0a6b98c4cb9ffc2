"""Keeping radiographs shared between datasets out of the test and public sets.

A twin pair (shared.prep.overlap) or a mapping row (shared.prep.mapping) says that an RSNA
patient IS an NIH patient: it links the two patients, and linked patients form a group (a
connected component across datasets). The split keeps each group on one side:

- before splitting, each linked group draws one side, seeded, at the split's fractions
  (test, public or the sites: `pin_groups`), and every dataset's split puts the group's
  patients there (free patients fill the rest of each quota). On a twin where every RSNA
  image is an NIH image, as in the real data (300 patients each), dropping twins after an
  independent split cost 88% of test_rsna's images and 64% of test_nih's; pinned, the
  test sets kept 47 of 60 and 113 of 116;
- after splitting, the policy is checked and enforced (`keep_twins_apart`): a group that
  any site trains on (a site's train or val part holds one of its images) loses every
  image it has in a test set or a public split, and a group with images in a test set and
  in a public split loses the public ones (the outsider must not train on an image it then
  attacks). After a pinned split nothing needs to go; a cap (max_patients) may still cut.

A linked group of more than data.overlap.max_group_patients patients is suspect (false
perceptual matches chain patients): only its exact, mapped and mutual-best perceptual links
are kept (`vet_groups`), and it is logged and reported. With the mapping (the ground truth
for NIH and RSNA), the detector's pairs are checked against it (`agreement`): found by
both, only by the mapping, only by the detector; a detector pair the mapping contradicts
(its RSNA image is another NIH patient's) is not used.

The split's report (`<splits>/overlap.json`) says how many twins were found and by which
method, which side each group drew, where each pair ended up, and what was dropped; the
suspect groups, and the agreement with the mapping when there is one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.config.data import DataConfig, SplitConfig
from shared.data.records import DatasetIndex, Sample
from shared.errors import DatasetError
from shared.io import atomic_write
from shared.prep import overlap
from shared.prep.mapping import read_mapping

log = logging.getLogger(__name__)
OVERLAP_FILE = "overlap.json"
HELD_OUT = ("test", "public")  # the groups of a split that no site trains on
Node = tuple[str, str]  # (dataset, patient id)
Placed = dict[str, dict[str, dict[str, list[Sample]]]]  # dataset -> group -> part -> samples


@dataclass(frozen=True)
class Link:
    """Image a_id of dataset a and image b_id of dataset b are the same radiograph or patient."""

    a: str
    a_id: str
    b: str
    b_id: str
    how: str  # exact | perceptual | mapping
    detail: dict[str, Any]


def find_links(
    data: DataConfig, indices: dict[str, DatasetIndex], splits_dir: Path
) -> tuple[list[Link], dict[str, Any]]:
    """Twins by content across every pair of datasets, plus the mapping file's rows; with
    the mapping, the detector's agreement with it and the detector links it contradicts
    dropped; the links of suspect groups pruned (`vet_groups`)."""
    info: dict[str, Any] = {"detect": data.overlap.detect, "mapping_file": None}
    detected: list[Link] = []
    if data.overlap.detect and len(indices) > 1:
        start = time.monotonic()
        hashes = [
            overlap.hash_dataset(ix, overlap.cache_path(splits_dir, n), data.workers)
            for n, ix in indices.items()
        ]
        detected = [
            Link(t.a, t.a_id, t.b, t.b_id, t.method, {"bits": t.bits, "corr": round(t.corr, 6)})
            for t in overlap.cross_dataset_twins(hashes)
        ]
        info.update(
            seconds=round(time.monotonic() - start, 2),
            hashed={h.dataset: len(h.ids) for h in hashes},
            not_hashed={h.dataset: h.skipped for h in hashes},
            thresholds={"phash_max_bits": overlap.PHASH_MAX_BITS, "rank_corr_min": overlap.RANK_CORR_MIN},
        )
    mapped: list[Link] = []
    if data.overlap.mapping_file is not None:
        kinds = {ds.kind: n for n, ds in data.datasets.items()}
        if set(kinds) != {"nih", "rsna"} or len(kinds) != len(data.datasets):
            raise DatasetError(
                f"data.overlap.mapping_file {data.overlap.mapping_file}: needs exactly one nih and one rsna "
                f"dataset; configured: {sorted(data.datasets)}"
            )
        nih, rsna = kinds["nih"], kinds["rsna"]
        rows, other = read_mapping(data.overlap.mapping_file, indices[nih], indices[rsna])
        mapped = [Link(nih, r.nih_id, rsna, r.rsna_id, "mapping", {"line": r.line}) for r in rows]
        info.update(
            mapping_file=str(data.overlap.mapping_file),
            mapping_rows=len(rows),
            mapping_rows_other_rsna_images=other,
        )
        if data.overlap.detect:
            detected, info["mapping_agreement"] = agreement(detected, mapped, indices)
    links, suspects = vet_groups(
        detected + mapped, patients_of(indices, detected + mapped), data.overlap.max_group_patients
    )
    info["max_group_patients"] = data.overlap.max_group_patients
    info["suspect_groups"] = suspects
    return links, info


EXAMPLES = 20  # pairs listed per kind of disagreement or per suspect group in overlap.json


def _pair(link: Link, nih: str) -> tuple[str, str]:
    """(NIH image, RSNA image) of a link between the two datasets."""
    return (link.a_id, link.b_id) if link.a == nih else (link.b_id, link.a_id)


def agreement(
    detected: list[Link], mapped: list[Link], indices: dict[str, DatasetIndex]
) -> tuple[list[Link], dict[str, Any]]:
    """The detector checked against the mapping (the ground truth), pair by pair: found by
    both, only by the mapping (missed), only by the detector. A detector-only pair whose
    RSNA image the mapping gives to another image of the same NIH patient links the same
    patients (kept); one the mapping gives to another NIH patient is contradicted: a false
    link, not used. Returns the detector links kept and the report."""
    if not mapped:
        return detected, {"pairs_both": 0, "pairs_mapping_only": 0, "pairs_detector_only": len(detected)}
    nih, rsna = mapped[0].a, mapped[0].b
    patient = patients_of(indices, detected + mapped)
    truth = {_pair(m, nih) for m in mapped}
    nih_of = {r: n for n, r in truth}
    found = {_pair(d, nih) for d in detected}
    kept, same, contradicted = [], [], []
    for d in detected:
        n, r = _pair(d, nih)
        if (n, r) in truth or r not in nih_of or patient[nih, nih_of[r]] == patient[nih, n]:
            kept.append(d)
            if (n, r) not in truth and r in nih_of:
                same.append((n, r))
        else:
            contradicted.append((n, r))
    both = truth & found
    missed = sorted(truth - found)
    only = sorted(found - truth)

    def listed(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
        return [{nih: n, rsna: r} for n, r in pairs[:EXAMPLES]]

    return kept, {
        "pairs_both": len(both),
        "pairs_mapping_only": len(missed),
        "pairs_detector_only": len(only),
        "detector_only_same_nih_patient": len(same),
        "detector_only_contradicted": len(contradicted),
        "recall": round(len(both) / len(truth), 4),
        "precision": round(len(both) / len(found), 4) if found else None,
        "mapping_only": listed(missed),
        "detector_only": listed(only),
        "contradicted_not_used": listed(sorted(contradicted)),
    }


def vet_groups(
    links: list[Link], patient: dict[tuple[str, str], str], max_patients: int
) -> tuple[list[Link], list[dict[str, Any]]]:
    """Links minus the doubtful ones of suspect groups, and a record of each suspect group.

    A linked group of more than `max_patients` patients is suspect: false perceptual
    matches (alike radiographs of different patients) chain patients into one group. In a
    suspect group only the exact-hash links, the mapping's rows and the perceptual links
    that are mutual best matches (each image's highest rank correlation among the group's
    perceptual links, both ways; a re-encoded copy is its original's best match and vice
    versa) are kept; the other perceptual links are dropped, and the group splits where
    they held it together. What is left of it stays linked (on one side of the split).
    Each suspect group is logged as a warning and recorded in overlap.json."""
    groups = linked_groups(patient, links)
    suspects: list[dict[str, Any]] = []
    drop: set[int] = set()
    node = {id(k): ((k.a, patient[k.a, k.a_id]), (k.b, patient[k.b, k.b_id])) for k in links}
    for nodes in groups:
        if len(nodes) <= max_patients:
            continue
        inside = [k for k in links if node[id(k)][0] in nodes]
        perceptual = [k for k in inside if k.how == "perceptual"]
        best: dict[tuple[str, str], Link] = {}
        for k in perceptual:
            for end in ((k.a, k.a_id), (k.b, k.b_id)):
                if end not in best or _strength(k) > _strength(best[end]):
                    best[end] = k
        weak = [k for k in perceptual if best[k.a, k.a_id] is not k or best[k.b, k.b_id] is not k]
        drop |= {id(k) for k in weak}
        kept = [k for k in inside if id(k) not in {id(w) for w in weak}]
        after = sorted((len(g) for g in linked_groups(patient, kept)), reverse=True)
        record: dict[str, Any] = {
            "patients": len(nodes),
            "datasets": dict(sorted(Counter(ds for ds, _ in nodes).items())),
            "links": dict(sorted(Counter(k.how for k in inside).items())),
            "perceptual_links_dropped": len(weak),
            "groups_after": after,
            "dropped": [
                {k.a: k.a_id, k.b: k.b_id, **k.detail} for k in sorted(weak, key=_strength, reverse=True)
            ][:EXAMPLES],
        }
        suspects.append(record)
        log.warning(
            "overlap: a linked group of %d patients (%s) is suspect (data.overlap.max_group_patients is "
            "%d): %d of its perceptual links are not mutual best matches and are dropped; what is left "
            "links groups of %s patients. Listed in overlap.json (suspect_groups)",
            len(nodes),
            ", ".join(f"{d} {n}" for d, n in record["datasets"].items()),
            max_patients,
            len(weak),
            ", ".join(map(str, after)) or "no",
        )
    return [k for k in links if id(k) not in drop], suspects


def _strength(link: Link) -> tuple[float, int, str, str]:
    """Order of perceptual links: rank correlation, then fewer pHash bits, then the ids."""
    return (link.detail.get("corr", 0.0), -link.detail.get("bits", 64), link.a_id, link.b_id)


def patients_of(indices: dict[str, DatasetIndex], links: list[Link]) -> dict[tuple[str, str], str]:
    """(dataset, image id) -> patient id, for every image of `indices` and of `links`."""
    patient = {(n, s.image_id): s.patient_id for n, ix in indices.items() for s in ix.samples}
    for link in links:  # an NIH image named by the mapping may be absent on disk (skip_unreadable)
        for ds, image in ((link.a, link.a_id), (link.b, link.b_id)):
            patient.setdefault((ds, image), f"{ds}:{image}")
    return patient


def linked_groups(patient: dict[tuple[str, str], str], links: list[Link]) -> list[set[Node]]:
    """The groups of patients that links join, across datasets (connected components)."""
    parent: dict[Node, Node] = {}

    def root(x: Node) -> Node:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for link in links:
        parent[root((link.a, patient[link.a, link.a_id]))] = root((link.b, patient[link.b, link.b_id]))
    members: dict[Node, set[Node]] = defaultdict(set)
    for node in list(parent):
        members[root(node)].add(node)
    return sorted((v for v in members.values() if len({d for d, _ in v}) > 1), key=min)


def pin_groups(groups: list[set[Node]], split: SplitConfig, seed: int) -> dict[str, dict[str, str]]:
    """dataset -> patient -> "test" | "public" | "site": one seeded draw per linked group, at
    the split's fractions, so that a group lands on one side in every dataset."""
    pins: dict[str, dict[str, str]] = defaultdict(dict)
    for nodes in groups:
        u = int.from_bytes(hashlib.sha256(f"{seed}:{min(nodes)}".encode()).digest()[:8], "little") / 2**64
        held = split.test_fraction + split.public_fraction
        side = "test" if u < split.test_fraction else "public" if u < held else "site"
        for ds, p in nodes:
            pins[ds][p] = side
    return pins


def keep_twins_apart(placed: Placed, indices: dict[str, DatasetIndex], links: list[Link]) -> dict[str, Any]:
    """Apply the policy to `placed` (in place); return the report. After a split that pinned
    the linked groups (`pin_groups`) nothing needs to go: then this is the proof."""
    patient = patients_of(indices, links)
    groups = linked_groups(patient, links)
    group_of = {
        (ds, s.patient_id): g
        for ds, gs in placed.items()
        for g, parts in gs.items()
        for samples in parts.values()
        for s in samples
    }
    drop: set[Node] = set()
    for nodes in groups:
        where = {group_of[m] for m in nodes if m in group_of}
        trained = any(g not in HELD_OUT for g in where)
        for m in nodes:
            g = group_of.get(m)
            if (g == "test" and trained) or (g == "public" and (trained or "test" in where)):
                drop.add(m)
    report = _report(placed, links, patient, group_of, drop)
    for ds, gs in placed.items():
        for g in HELD_OUT:
            for part, samples in gs.get(g, {}).items():
                gs[g][part] = [s for s in samples if (ds, s.patient_id) not in drop]
    report["linked_groups"] = len(groups)
    return report


def _report(
    placed: Placed,
    links: list[Link],
    patient: dict[tuple[str, str], str],
    group_of: dict[Node, str],
    drop: set[Node],
) -> dict[str, Any]:
    def manifest(ds: str, node: Node) -> str:
        g = group_of.get(node)
        return "unused" if g is None else f"{g}_{ds}" if g in HELD_OUT else f"site_{g}"

    dropped = {}
    for ds, groups in placed.items():
        for g in HELD_OUT:
            hit = [s for part in groups.get(g, {}).values() for s in part if (ds, s.patient_id) in drop]
            if hit:
                dropped[f"{g}_{ds}"] = {"images": len(hit), "patients": len({s.patient_id for s in hit})}
    pairs: list[dict[str, Any]] = []
    placement: Counter[str] = Counter()
    for link in links:
        na, nb = (link.a, patient[link.a, link.a_id]), (link.b, patient[link.b, link.b_id])
        where = [manifest(link.a, na), manifest(link.b, nb)]
        placement["+".join(sorted(w.split("_")[0] for w in where))] += 1
        pairs.append(
            {
                link.a: link.a_id,
                link.b: link.b_id,
                "how": link.how,
                **link.detail,
                "placed": where,
                "dropped": [w for w, n in zip(where, (na, nb), strict=True) if n in drop],
            }
        )
    images: dict[str, set[str]] = defaultdict(set)
    for link in links:
        images[link.a].add(link.a_id)
        images[link.b].add(link.b_id)
    return {
        "links": dict(Counter(link.how for link in links)),
        "images_with_twin": {k: len(v) for k, v in images.items()},
        "placement": dict(sorted(placement.items())),
        "dropped": dict(sorted(dropped.items())),
        "pairs": pairs,
    }


def summary(report: dict[str, Any]) -> str:
    """The report in a few lines (the split's log, `fedattack data check`)."""
    links = report.get("links", {})
    found = ", ".join(f"{n} {how}" for how, n in sorted(links.items())) or "none"
    lines = [
        f"cross-dataset overlap: {len(report.get('pairs', []))} twin pairs/links ({found}); "
        f"images with a twin: {report.get('images_with_twin', {}) or 'none'}"
    ]
    if not report.get("detect", True):
        lines.append("  detection by content is off (data.overlap.detect: false)")
    if report.get("pinned"):
        sides = ", ".join(f"{k} {v}" for k, v in report["pinned"].items())
        lines.append(f"  {report['linked_groups']} linked patient groups, each kept on one side: {sides}")
    if report.get("placement"):
        placed = ", ".join(f"{k} {v}" for k, v in report["placement"].items())
        lines.append(f"  placed by the split: {placed}")
    drops = [
        f"{m} {c['images']} image(s) of {c['patients']} patient(s)" for m, c in report["dropped"].items()
    ]
    lines.append("  dropped: " + ("; ".join(drops) or "nothing (no twin of a site's data was held out)"))
    if report.get("suspect_groups"):
        sizes = ", ".join(str(g["patients"]) for g in report["suspect_groups"])
        lines.append(
            f"  suspect groups (more than {report.get('max_group_patients')} patients): {sizes} patients; "
            "only their exact, mapped and mutual-best links kept"
        )
    if (agree := report.get("mapping_agreement")) is not None:
        lines.append(
            f"  detector vs the mapping file: {agree['pairs_both']} pairs found by both, "
            f"{agree['pairs_mapping_only']} only in the mapping, {agree['pairs_detector_only']} only by the "
            f"detector ({agree.get('detector_only_contradicted', 0)} contradicted by it, not used)"
        )
    return "\n".join(lines)


def write_report(splits_dir: Path, report: dict[str, Any]) -> Path:
    path = Path(splits_dir) / OVERLAP_FILE
    atomic_write(path, json.dumps(report, indent=1))
    return path


def read_report(splits_dir: Path) -> dict[str, Any] | None:
    path = Path(splits_dir) / OVERLAP_FILE
    return json.loads(path.read_text()) if path.exists() else None
