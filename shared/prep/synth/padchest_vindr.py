"""Synthetic twins of PadChest (16-bit PNGs, a Python-list label column) and VinDr-CXR
(per-radiologist rows, MONOCHROME1 and MONOCHROME2 DICOMs) in their published layouts.

Each writer returns what its reader must yield with default options: PadChest image id ->
label (lateral and unlabelled rows left out); VinDr image id -> the radiologists' votes
(the label is a policy over them) or, for a test image, its consensus label.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from shared.prep.synth.chexpert_family import write_gz_csv
from shared.prep.synth.image import chest_image

PADCHEST_HEADER = [
    "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
    "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric", "Modality_DICOM",
    "Manufacturer_DICOM", "PhotometricInterpretation_DICOM", "PixelRepresentation_DICOM",
    "PixelAspectRatio_DICOM", "SpatialResolution_DICOM", "BitsStored_DICOM", "WindowCenter_DICOM",
    "WindowWidth_DICOM", "Rows_DICOM", "Columns_DICOM", "XRayTubeCurrent_DICOM", "Exposure_DICOM",
    "ExposureInuAs_DICOM", "ExposureTime", "RelativeXRayExposure_DICOM", "ReportID", "Report",
    "MethodLabel", "Labels", "Localizations", "LabelsLocalizationsBySentence", "labelCUIS",
    "LocalizationsCUIS",
]  # fmt: skip
PADCHEST_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
POSITIVE_LABELS = (["pneumonia"], ["pneumonia", "alveolar pattern"], ["atypical pneumonia", "infiltrates"])
NEGATIVE_LABELS = {None: ["normal"], "Nodule": ["nodule"], "Effusion": ["pleural effusion"],
                   "Cardiomegaly": ["cardiomegaly"]}  # fmt: skip
DISTRACTORS = ("Nodule", "Effusion", "Cardiomegaly")


def save_png16(path: Path, img: np.ndarray) -> None:
    """A 16-bit grayscale PNG of a [0, 1] image (PadChest's format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(np.rint(img * 65535.0), 0, 65535).astype(np.uint16)).save(path)


def write_padchest(
    out: Path, patients: int, size: int, rng: np.random.Generator, positive_rate: float
) -> dict[str, int]:
    """PadChest layout: the gzipped labels CSV and 16-bit PNGs in numbered folders (0/, 1/, ...).
    Planted: lateral (L) and COSTAL projections, rows without labels, AP_horizontal."""
    rows: list[list[str]] = []
    truth: dict[str, int] = {}
    for k in range(patients):
        patient = f"{int(rng.integers(0, 2**62)):032d}"[-32:]
        for s in range(int(rng.integers(1, 3))):
            study = f"{int(rng.integers(0, 2**62)):032d}"[-32:]
            positive = bool(rng.random() < positive_rate)
            distractor = None if positive or rng.random() > 0.4 else DISTRACTORS[int(rng.integers(0, 3))]
            labels = POSITIVE_LABELS[int(rng.integers(0, 3))] if positive else NEGATIVE_LABELS[distractor]
            unlabelled = rng.random() < 0.05
            views = ["PA" if rng.random() < 0.6 else str(rng.choice(["AP", "AP_horizontal"]))]
            views += ["L"] if rng.random() < 0.3 else []
            views += ["COSTAL"] if rng.random() < 0.03 else []
            for v, view in enumerate(views):
                image_id = f"2168401113669640{k:06d}{s:02d}{v:02d}_{k % 100:02d}-{s:03d}-{v:03d}.png"
                folder = str(len(rows) // 40)
                img, _ = chest_image(rng, size, positive, distractor)
                save_png16(out / folder / image_id, img)
                rows.append(
                    _padchest_row(image_id, folder, study, patient, view, "" if unlabelled else str(labels))
                )
                if view in ("PA", "AP", "AP_horizontal") and not unlabelled:
                    truth[image_id] = int(positive)
    out.mkdir(parents=True, exist_ok=True)
    write_gz_csv(out / PADCHEST_CSV, PADCHEST_HEADER, rows)
    return truth


def _padchest_row(image_id: str, folder: str, study: str, patient: str, view: str, labels: str) -> list[str]:
    row = dict.fromkeys(PADCHEST_HEADER, "")
    row.update(
        ImageID=image_id, ImageDir=folder, StudyDate_DICOM="20150702", StudyID=study, PatientID=patient,
        PatientBirth="1950.0", PatientSex_DICOM="M", Projection=view, Modality_DICOM="CR",
        PhotometricInterpretation_DICOM="MONOCHROME2", BitsStored_DICOM="16", Labels=labels,
        MethodLabel="Physician", Pediatric="No", Report="sin hallazgos",
    )  # fmt: skip
    return list(row.values())


VINDR_FINDINGS = [
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
    "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity",
    "Lung cavity", "Lung cyst",
    "Mediastinal shift", "Nodule/Mass", "Pleural effusion", "Pleural thickening", "Pneumothorax",
    "Pulmonary fibrosis", "Rib fracture", "Other lesion", "COPD", "Lung tumor", "Pneumonia", "Tuberculosis",
    "Other diseases", "No finding",
]  # fmt: skip
# Votes for a drawn positive / negative image: unanimous, 2 of 3, or one dissenting reader.
POSITIVE_VOTES = ((1, 1, 1), (1, 1, 0), (1, 0, 0))
NEGATIVE_VOTES = ((0, 0, 0), (0, 0, 0), (1, 0, 0))


def vindr_dicom(img: np.ndarray, image_id: str, monochrome1: bool, bits: int) -> bytes:
    """An uncompressed VinDr-like DICOM: `bits` stored in 16, MONOCHROME1 stored inverted."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    top = 2**bits - 1
    stored = np.rint((1.0 - img if monochrome1 else img) * top).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[image_id])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(f"{image_id}.dicom", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SamplesPerPixel = "DX", 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.PixelData = stored.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_vindr(
    out: Path, patients: int, size: int, rng: np.random.Generator, positive_rate: float
) -> dict[str, tuple[int, ...]]:
    """VinDr-CXR 1.0.0 layout: annotations/image_labels_{train,test}.csv, train|test/<id>.dicom.
    One image per patient; a tenth are test images with one consensus row."""
    train_rows: list[list[str]] = []
    test_rows: list[list[str]] = []
    truth: dict[str, tuple[int, ...]] = {}
    for k in range(patients):
        image_id = f"{int(rng.integers(0, 2**62)):016x}{k:016x}"
        positive = bool(rng.random() < positive_rate)
        img, _ = chest_image(rng, size, positive, None)
        part = "test" if k % 10 == 9 else "train"
        (out / part).mkdir(parents=True, exist_ok=True)
        blob = vindr_dicom(
            img, image_id, monochrome1=bool(rng.random() < 0.4), bits=int(rng.choice([12, 14, 16]))
        )
        (out / part / f"{image_id}.dicom").write_bytes(blob)
        if part == "test":
            test_rows.append([image_id, *_vindr_cells(int(positive))])
            truth[image_id] = (int(positive),)
            continue
        votes = (POSITIVE_VOTES if positive else NEGATIVE_VOTES)[int(rng.integers(0, 3))]
        readers = rng.choice(17, size=3, replace=False) + 1
        for vote, reader in zip(votes, readers, strict=True):
            train_rows.append([image_id, f"R{reader}", *_vindr_cells(vote)])
        truth[image_id] = votes
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    _plain_csv(
        out / "annotations" / "image_labels_train.csv", ["image_id", "rad_id", *VINDR_FINDINGS], train_rows
    )
    test_header = ["image_id", *VINDR_FINDINGS[:-2], "Other disease", "No finding"]  # the test CSV's spelling
    _plain_csv(out / "annotations" / "image_labels_test.csv", test_header, test_rows)
    return truth


def _vindr_cells(pneumonia: int) -> list[str]:
    cells = dict.fromkeys(VINDR_FINDINGS, "0")
    cells["Pneumonia"] = str(pneumonia)
    cells["Lung Opacity"] = str(pneumonia)
    cells["No finding"] = str(1 - pneumonia)
    return list(cells.values())


def _plain_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
