"""RSNA-like DICOM files for the synthetic twin (pydicom cannot encode JPEG Baseline itself:
Pillow's JPEG bytes, encapsulated)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def to_u8(img: np.ndarray) -> np.ndarray:
    """[0, 1] floats to uint8 (rounded)."""
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def dicom_bytes(img: np.ndarray, patient_id: str, age: int, sex: str, view: str) -> bytes:
    """An RSNA-like DICOM: CR, MONOCHROME2, 8-bit, Secondary Capture, JPEG Baseline."""
    import pydicom.config
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, generate_uid

    jpeg = io.BytesIO()
    Image.fromarray(to_u8(img), mode="L").save(jpeg, format="JPEG", quality=95)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(SECONDARY_CAPTURE)
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[patient_id, "sop"])
    meta.TransferSyntaxUID = UID(JPEG_BASELINE)
    ds = FileDataset(f"{patient_id}.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[patient_id, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[patient_id, "series"])
    ds.PatientID, ds.PatientName = patient_id, patient_id
    # The real files carry a bare number here, which is not a valid AS value.
    settings = pydicom.config.settings
    modes = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        ds.PatientAge = str(age)
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = modes
    ds.PatientSex = sex
    ds.Modality, ds.ConversionType, ds.BodyPartExamined = "CR", "WSD", "CHEST"
    ds.ViewPosition, ds.SeriesDescription = view, f"view: {view}"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = img.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.LossyImageCompression = "01"
    ds.PixelSpacing = [0.168, 0.168]
    ds.PixelData = encapsulate([jpeg.getvalue()])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
