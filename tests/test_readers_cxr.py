"""CheXpert, MIMIC-CXR-JPG, PadChest and VinDr-CXR readers on hand-written miniatures of
their published layouts (a few rows written here, not by the twin generator): ids, labels
(uncertain, multi-radiologist), patient grouping, view filtering and the bad inputs."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.data.images import read_image
from shared.errors import ConfigError, DatasetError
from shared.prep.chexpert import read_chexpert
from shared.prep.mimic import read_mimic
from shared.prep.padchest import read_padchest
from shared.prep.sources import read_dataset
from shared.prep.synth.padchest_vindr import vindr_dicom
from shared.prep.vindr import read_vindr

pytestmark = pytest.mark.unit

OBS = (
    "No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,"
    "Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices"
)


def _jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(path, format="JPEG")


def _chexpert_row(path: str, fl: str, appa: str, pneumonia: str) -> str:
    cells = [""] * 14
    cells[7] = pneumonia
    return ",".join([f"CheXpert-v1.0-small/{path}", "Female", "68", fl, appa, *cells])


CHEXPERT_TRAIN = [
    ("train/patient00001/study1/view1_frontal.jpg", "Frontal", "AP", "1.0"),
    ("train/patient00001/study1/view2_lateral.jpg", "Lateral", "", "1.0"),
    ("train/patient00001/study2/view1_frontal.jpg", "Frontal", "PA", "-1.0"),
    ("train/patient00002/study1/view1_frontal.jpg", "Frontal", "AP", ""),
    ("train/patient00003/study1/view1_frontal.jpg", "Frontal", "PA", "0.0"),
]


def _chexpert(root: Path, train: list[tuple[str, str, str, str]] = CHEXPERT_TRAIN) -> Path:
    header = f"Path,Sex,Age,Frontal/Lateral,AP/PA,{OBS}\n"
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.csv").write_text(header + "".join(_chexpert_row(*r) + "\n" for r in train))
    valid = ("valid/patient64541/study1/view1_frontal.jpg", "Frontal", "AP", "1.0")
    (root / "valid.csv").write_text(header + _chexpert_row(*valid) + "\n")
    for rel, *_ in [*train, valid]:
        if ".." not in rel:
            _jpeg(root / rel)
    return root


def test_chexpert_ids_labels_patients_views_and_uncertainty(tmp_path: Path) -> None:
    root = _chexpert(tmp_path / "CheXpert-v1.0-small")
    idx = read_chexpert(root)
    got = {s.image_id: (s.patient_id, s.label) for s in idx.samples}
    assert got == {
        "train/patient00001/study1/view1_frontal.jpg": ("chexpert:patient00001", 1),
        "train/patient00002/study1/view1_frontal.jpg": ("chexpert:patient00002", 0),  # blank: not mentioned
        "train/patient00003/study1/view1_frontal.jpg": ("chexpert:patient00003", 0),
        "valid/patient64541/study1/view1_frontal.jpg": ("chexpert:patient64541", 1),
    }  # lateral left out by default, the uncertain study by `ignore`
    assert all(s.relpath == s.image_id and (root / s.relpath).is_file() for s in idx.samples)
    uncertain = "train/patient00001/study2/view1_frontal.jpg"
    assert {s.image_id: s.label for s in read_chexpert(root, uncertain="zeros").samples}[uncertain] == 0
    ones = read_chexpert(root, uncertain="ones", views=("Frontal", "Lateral"))
    labels = {s.image_id: s.label for s in ones.samples}
    assert labels[uncertain] == 1 and labels["train/patient00001/study1/view2_lateral.jpg"] == 1
    assert len({s.patient_id for s in ones.samples if "patient00001" in s.image_id}) == 1


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            ("train/patient00004/study1/view1_frontal.jpg", "Frontal", "AP", "2.0"),
            r"train.csv:7: unknown value '2.0' in column 'Pneumonia'",
        ),
        (
            ("CheXpert-v1.0-small/../../../etc/x.jpg", "Frontal", "AP", "1.0"),
            r"train.csv:7: path .* leaves the dataset root",
        ),
        (
            ("train/patient00001/study1/view1_frontal.jpg", "Frontal", "AP", "1.0"),
            r"train.csv:7: image .* listed again \(first at .*train.csv:2\)",
        ),
        (
            ("train/somebody/view1_frontal.jpg", "Frontal", "AP", "1.0"),
            r"train.csv:7: Path .* patientNNNNN/studyN",
        ),
    ],
    ids=["label-outside-encoding", "path-escapes-root", "image-twice", "no-patient-folder"],
)
def test_chexpert_bad_rows_are_one_line_errors_naming_the_row(
    tmp_path: Path, row: tuple[str, str, str, str], message: str
) -> None:
    root = _chexpert(tmp_path / "c", [*CHEXPERT_TRAIN, row])
    with pytest.raises(DatasetError, match=message) as e:
        read_chexpert(root)
    assert "\n" not in str(e.value)


def test_chexpert_missing_column_and_absent_image(tmp_path: Path) -> None:
    root = _chexpert(tmp_path / "c")
    (root / "train/patient00003/study1/view1_frontal.jpg").unlink()
    with pytest.raises(DatasetError, match=r"1 listed image.*patient00003"):
        read_chexpert(root)
    assert read_chexpert(root, allow_missing=True).missing == ("train/patient00003/study1/view1_frontal.jpg",)
    csv_path = root / "train.csv"
    csv_path.write_text(csv_path.read_text().replace("Frontal/Lateral", "View", 1))
    with pytest.raises(DatasetError, match=r"train.csv: missing column\(s\) \['Frontal/Lateral'\]"):
        read_chexpert(root)


MIMIC_META = (
    "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,"
    "StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
    "PatientOrientationCodeSequence_CodeMeaning\n"
    "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544,"
    "21800506,213014.531,CHEST (PA AND LAT),postero-anterior,Erect\n"
    "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962,10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544,"
    "21800506,213014.531,CHEST (PA AND LAT),lateral,Erect\n"
    "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab,10000032,53189527,CHEST (PORTABLE AP),AP,2705,2539,"
    "21800626,165500.312,CHEST (PORTABLE AP),antero-posterior,\n"
    "68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714,10000764,57375967,CHEST (PA AND LAT),PA,3056,2544,"
    "21321015,75931.984,CHEST (PA AND LAT),postero-anterior,Erect\n"
    "9a2fdc3c-6d0b0b6e-ad0dba11-1a0db5e2-2b6a0c0a,11000011,55555555,CHEST (PA),PA,3056,2544,"
    "21321015,75931.984,CHEST (PA),postero-anterior,Erect\n"
    "e3b0c442-98fc1c14-9afbf4c8-996fb924-27ae41e4,12000012,56666666,CHEST (PA),PA,3056,2544,"
    "21321015,75931.984,CHEST (PA),postero-anterior,Erect\n"
)
MIMIC_LABELS_HEADER = (
    "subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,"
    "Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,"
    "Support Devices\n"
)


def _mimic_label(subject: str, study: str, pneumonia: str) -> str:
    cells = [""] * 14
    cells[11] = pneumonia
    return ",".join([subject, study, *cells]) + "\n"


def _mimic(root: Path, extra_label: str = "") -> Path:
    root.mkdir(parents=True)
    (root / "mimic-cxr-2.0.0-metadata.csv.gz").write_bytes(gzip.compress(MIMIC_META.encode()))
    (root / "mimic-cxr-2.0.0-chexpert.csv").write_text(  # the plain copy is accepted too
        MIMIC_LABELS_HEADER
        + _mimic_label("10000032", "50414267", "1.0")
        + _mimic_label("10000032", "53189527", "-1.0")
        + _mimic_label("10000764", "57375967", "0.0")
        + _mimic_label("12000012", "56666666", "")
        + extra_label
    )  # study 55555555 of subject 11000011 has no label row
    split = "dicom_id,study_id,subject_id,split\n" + "".join(
        f"{line.split(',')[0]},{line.split(',')[2]},{line.split(',')[1]},"
        f"{'test' if '12000012' in line else 'train'}\n"
        for line in MIMIC_META.splitlines()[1:]
    )
    (root / "mimic-cxr-2.0.0-split.csv.gz").write_bytes(gzip.compress(split.encode()))
    for line in MIMIC_META.splitlines()[1:]:
        dicom_id, subject, study = line.split(",")[:3]
        _jpeg(root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id}.jpg")
    return root


def test_mimic_joins_on_subject_and_study_filters_views_and_pins_the_official_test(tmp_path: Path) -> None:
    root = _mimic(tmp_path / "mimic")
    idx = read_mimic(root)
    got = {s.image_id: (s.patient_id, s.label) for s in idx.samples}
    assert got == {
        "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014": ("mimic:10000032", 1),
        "68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714": ("mimic:10000764", 0),
        "e3b0c442-98fc1c14-9afbf4c8-996fb924-27ae41e4": ("mimic:12000012", 0),
    }  # lateral, uncertain (ignore) and unlabelled study left out
    first = next(s for s in idx.samples if s.patient_id == "mimic:10000032")
    assert first.relpath == "files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg"
    assert idx.pinned == {}
    ones = read_mimic(root, uncertain="ones", views=("PA", "AP", "LATERAL"), official_split=True)
    labels = {s.image_id: s.label for s in ones.samples}
    assert labels["2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab"] == 1
    assert labels["174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962"] == 1  # the study's label, lateral view
    assert ones.pinned == {"mimic:12000012": "test", "mimic:10000032": "site", "mimic:10000764": "site"}


def test_mimic_bad_label_and_second_label_row(tmp_path: Path) -> None:
    root = _mimic(tmp_path / "a", _mimic_label("10000764", "58888888", "yes"))
    with pytest.raises(DatasetError, match=r"chexpert.csv:6: unknown value 'yes' in column 'Pneumonia'"):
        read_mimic(root)
    root = _mimic(tmp_path / "b", _mimic_label("10000032", "50414267", "0.0"))
    with pytest.raises(
        DatasetError, match=r"chexpert.csv:6: study 50414267 of subject 10000032 has a second"
    ):
        read_mimic(root)


PADCHEST_HEADER = (
    "ImageID,ImageDir,StudyDate_DICOM,StudyID,PatientID,PatientBirth,PatientSex_DICOM,ViewPosition_DICOM,"
    "Projection,MethodProjection,Pediatric,Modality_DICOM,Labels,Localizations\n"
)
PADCHEST_ROWS = [
    (
        "20536686640136348236148679891455886468_k6ga29.png",
        "0",
        "pat1",
        "PA",
        "\"['pneumonia', 'infiltrates']\"",
    ),
    (
        "20536686640136348236148679891455886468_k6ga30.png",
        "0",
        "pat1",
        "L",
        "\"['pneumonia', 'infiltrates']\"",
    ),
    ("135803415504923515076821959678074435083_fzis7d.png", "1", "pat2", "AP_horizontal", "\"['normal']\""),
    ("313572750430997347502932654319389875966_x2p1ux.png", "1", "pat3", "PA", ""),
    (
        "216840111366964012558082906712009327122220177_00-102-064.png",
        "1",
        "pat4",
        "PA",
        "\"['atypical pneumonia']\"",
    ),
]


def _padchest(root: Path, rows: list[tuple[str, str, str, str, str]] = PADCHEST_ROWS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = [f"{i},{d},20150702,st,{p},1950.0,M,POSTEROANTERIOR,{v},Manual,No,CR,{lab},\"['loc']\"\n"
             for i, d, p, v, lab in rows]  # fmt: skip
    (root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv").write_text(
        PADCHEST_HEADER + "".join(lines)
    )
    for image_id, folder, *_ in rows:
        if folder.isdigit() and "/" not in image_id:
            (root / folder).mkdir(exist_ok=True)
            Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(root / folder / image_id)
    return root


def test_padchest_list_labels_projections_and_16_bit_pngs(tmp_path: Path) -> None:
    root = _padchest(tmp_path / "padchest")
    idx = read_padchest(root)
    got = {s.image_id: (s.patient_id, s.relpath.split("/")[0], s.label) for s in idx.samples}
    assert got == {
        "20536686640136348236148679891455886468_k6ga29.png": ("padchest:pat1", "0", 1),
        "135803415504923515076821959678074435083_fzis7d.png": ("padchest:pat2", "1", 0),
        "216840111366964012558082906712009327122220177_00-102-064.png": ("padchest:pat4", "1", 1),
    }  # the lateral (L) and the unlabelled row left out
    lateral = read_padchest(root, views=("L",))
    assert [s.label for s in lateral.samples] == [1]
    png = read_image(root / idx.samples[0].relpath)
    np.testing.assert_allclose(png, 40000 / 65535, atol=1e-6)  # 16 bit, scaled by its full range


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (("a.png", "2", "pat5", "PA", "pneumonia"), r":7: unknown value 'pneumonia' in column 'Labels'"),
        (
            ("../../a.png", "2", "pat5", "PA", "\"['normal']\""),
            r":7: path '../../a.png' .* leaves the dataset root",
        ),
        (("a.png", "two", "pat5", "PA", "\"['normal']\""), r":7: ImageDir 'two' is not a folder number"),
        (
            ("135803415504923515076821959678074435083_fzis7d.png", "1", "pat2", "PA", "\"['normal']\""),
            r":7: image .* listed again \(first at .*:4\)",
        ),
    ],
    ids=["label-not-a-list", "path-escapes-root", "folder-not-a-number", "image-twice"],
)
def test_padchest_bad_rows(tmp_path: Path, row: tuple[str, str, str, str, str], message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        read_padchest(_padchest(tmp_path / "p", [*PADCHEST_ROWS, row]))


def test_padchest_missing_column_names_the_file(tmp_path: Path) -> None:
    root = _padchest(tmp_path / "p")
    csv_path = root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
    csv_path.write_text(csv_path.read_text().replace("Projection", "Proj", 1))
    with pytest.raises(DatasetError, match=r"160K_01.02.19.csv: missing column\(s\) \['Projection'\]"):
        read_padchest(root)


VINDR_FINDINGS = (
    "Aortic enlargement,Atelectasis,Calcification,Cardiomegaly,Clavicle fracture,Consolidation,Edema,"
    "Emphysema,Enlarged PA,ILD,Infiltration,Lung Opacity,Lung cavity,Lung cyst,Mediastinal shift,"
    "Nodule/Mass,Pleural effusion,Pleural thickening,Pneumothorax,Pulmonary fibrosis,Rib fracture,"
    "Other lesion,COPD,Lung tumor,Pneumonia,Tuberculosis,{other},No finding"
)


def _vindr_cells(pneumonia: str) -> str:
    cells = ["0"] * 28
    cells[24] = pneumonia
    return ",".join(cells)


def _vindr(root: Path, votes: dict[str, list[tuple[str, str]]], test: dict[str, str]) -> Path:
    (root / "annotations").mkdir(parents=True)
    train = "image_id,rad_id," + VINDR_FINDINGS.format(other="Other diseases") + "\n"
    train += "".join(f"{i},{r},{_vindr_cells(v)}\n" for i, rows in votes.items() for r, v in rows)
    (root / "annotations" / "image_labels_train.csv").write_text(train)
    head = "image_id," + VINDR_FINDINGS.format(other="Other disease") + "\n"
    (root / "annotations" / "image_labels_test.csv").write_text(
        head + "".join(f"{i},{_vindr_cells(v)}\n" for i, v in test.items())
    )
    img = np.tile(np.linspace(0, 1, 16, dtype=np.float32), (16, 1))
    for n, (part, image_id) in enumerate([*(("train", i) for i in votes), *(("test", i) for i in test)]):
        (root / part).mkdir(exist_ok=True)
        (root / part / f"{image_id}.dicom").write_bytes(vindr_dicom(img, image_id, n % 2 == 0, 12))
    return root


VOTES = {
    "000434271f63a053c4128a0ba6352c7f": [("R2", "1"), ("R3", "1"), ("R6", "0")],
    "00053190460d56c53cc3e57321387478": [("R8", "1"), ("R10", "0"), ("R9", "0")],
    "0005e8e3701dfb1dd93d53e2ff537b6e": [("R8", "0"), ("R9", "0"), ("R10", "0")],
}


def test_vindr_radiologist_policies_test_consensus_and_monochrome1(tmp_path: Path) -> None:
    root = _vindr(tmp_path / "vindr", VOTES, {"002a34c58c5b758217ed1f584ccbcfe9": "1"})
    majority = {s.image_id: s.label for s in read_vindr(root).samples}
    assert majority == {
        "000434271f63a053c4128a0ba6352c7f": 1,
        "00053190460d56c53cc3e57321387478": 0,  # one radiologist of three
        "0005e8e3701dfb1dd93d53e2ff537b6e": 0,
        "002a34c58c5b758217ed1f584ccbcfe9": 1,  # the test set's consensus row
    }
    anyone = read_vindr(root, radiologists="any")
    assert {s.image_id: s.label for s in anyone.samples}["00053190460d56c53cc3e57321387478"] == 1
    assert all(s.patient_id == f"vindr:{s.image_id}" for s in anyone.samples)
    assert {s.relpath.split("/")[0] for s in anyone.samples} == {"train", "test"}
    ramp = np.tile(np.linspace(0, 1, 16, dtype=np.float32), (16, 1))
    for s in anyone.samples:  # MONOCHROME1 (every other file) reads as the same picture as MONOCHROME2
        np.testing.assert_allclose(read_image(root / s.relpath), ramp, atol=1 / 4095 + 1e-6)


def test_vindr_bad_inputs(tmp_path: Path) -> None:
    twice = {"000434271f63a053c4128a0ba6352c7f": [("R2", "1"), ("R2", "0"), ("R6", "0")]}
    with pytest.raises(
        DatasetError, match=r"image_labels_train.csv:3: image '000434271f63a053c4128a0ba6352c7f by R2'"
    ):
        read_vindr(_vindr(tmp_path / "a", twice, {}))
    bad = {"000434271f63a053c4128a0ba6352c7f": [("R2", "1"), ("R3", "0.5"), ("R6", "0")]}
    with pytest.raises(
        DatasetError, match=r"image_labels_train.csv:3: unknown value '0.5' in column 'Pneumonia'"
    ):
        read_vindr(_vindr(tmp_path / "b", bad, {}))
    root = _vindr(tmp_path / "c", VOTES, {})
    (root / "train" / "0005e8e3701dfb1dd93d53e2ff537b6e.dicom").unlink()
    assert read_vindr(root, allow_missing=True).missing == ("train/0005e8e3701dfb1dd93d53e2ff537b6e.dicom",)


def test_unknown_kind_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"unknown dataset kind 'openi'; known: \['chexpert', 'mimic', 'nih'"
    ):
        read_dataset("openi", tmp_path)
