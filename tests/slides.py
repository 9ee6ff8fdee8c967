"""Synthetic slide microscopy series, as IDC serves them: one DICOM file per pyramid level (VL
Whole Slide Microscopy Image, TILED_FULL, JPEG baseline tiles), plus a thumbnail and a label,
with a Basic Offset Table, an Extended Offset Table, or no offset table at all (how IDC's
converted slides were stored as of release v17).

Seeded: the same arguments make the same bytes. For the tests (small slides) and the benchmark
(a base level above 1 GB, where tiles repeat a few distinct images so that making it is fast).
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.sequence import Sequence
from pydicom.uid import JPEGBaseline8Bit, generate_uid

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
OFFSET_TABLES = ("bot", "eot", "none")


@dataclass(frozen=True)
class Slide:
    """The files of one slide: name -> bytes, in the order of the pyramid (base level first)."""

    files: dict[str, bytes]
    levels: int
    size: tuple[int, int]  # the base level's width and height in pixels


def _tile(rng: random.Random, size: int, quality: int) -> bytes:
    """A JPEG tile of smooth noise: compresses like tissue, not like a flat colour."""
    coarse = np.frombuffer(rng.randbytes((size // 8) ** 2 * 3), np.uint8).reshape(
        size // 8, size // 8, 3)
    image = Image.fromarray(coarse).resize((size, size), Image.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _level(uids: dict, number: int, image_type: list[str], width: int, height: int, tile: int,
           frames: list[bytes], table: str, spacing_mm: float) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = WSI_SOP_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[uids["series"], str(number)])
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.SOPClassUID = WSI_SOP_CLASS
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.PatientID, ds.PatientName, ds.Modality = uids["patient"], "Slide^Test", "SM"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AcquisitionDateTime = "20260101120000"
    ds.Manufacturer, ds.ManufacturerModelName = "idcfs tests", "synthetic"
    ds.DeviceSerialNumber, ds.SoftwareVersions = "1", "1"
    ds.SeriesNumber, ds.InstanceNumber = 1, number
    ds.ImageType = image_type
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.Rows = ds.Columns = tile
    ds.NumberOfFrames = len(frames)
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = width, height
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.ImagedVolumeWidth, ds.ImagedVolumeHeight = width * spacing_mm, height * spacing_mm
    ds.ImagedVolumeDepth = 0.001
    ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem = origin.YOffsetInSlideCoordinateSystem = 20
    ds.TotalPixelMatrixOriginSequence = Sequence([origin])
    measures = Dataset()
    measures.PixelSpacing = [spacing_mm, spacing_mm]
    measures.SliceThickness = 0.001
    frame_type = Dataset()
    frame_type.FrameType = image_type
    path_id = Dataset()
    path_id.OpticalPathIdentifier = "0"
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.WholeSlideMicroscopyImageFrameTypeSequence = Sequence([frame_type])
    shared.OpticalPathIdentificationSequence = Sequence([path_id])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    path = Dataset()
    path.OpticalPathIdentifier = "0"
    path.IlluminationColorCodeSequence = Sequence([_code("R-102C0", "SRT", "Full Spectrum")])
    path.IlluminationTypeCodeSequence = Sequence([_code("111744", "DCM", "Brightfield illumination")])
    ds.OpticalPathSequence = Sequence([path])
    ds.NumberOfOpticalPaths = 1
    ds.ContainerIdentifier = "CONTAINER-1"
    ds.IssuerOfTheContainerIdentifierSequence = Sequence([])
    ds.ContainerTypeCodeSequence = Sequence([_code("433466003", "SCT", "Microscope slide")])
    specimen = Dataset()
    specimen.SpecimenIdentifier = "SPECIMEN-1"
    specimen.SpecimenUID = uids["specimen"]
    specimen.IssuerOfTheSpecimenIdentifierSequence = Sequence([])
    specimen.SpecimenPreparationSequence = Sequence([])
    ds.SpecimenDescriptionSequence = Sequence([specimen])
    ds.AcquisitionContextSequence = Sequence([])
    ds.FocusMethod, ds.ExtendedDepthOfField = "AUTO", "NO"
    ds.VolumetricProperties = "VOLUME"
    ds.SpecimenLabelInImage = "YES" if "LABEL" in image_type else "NO"
    ds.BurnedInAnnotation = "YES" if "LABEL" in image_type else "NO"
    ds.LossyImageCompression, ds.LossyImageCompressionMethod = "01", "ISO_10918_1"
    ds.LossyImageCompressionRatio = 10
    if table == "eot":
        data, offsets, lengths = encapsulate_extended(frames)
        ds.PixelData = data
        ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = offsets, lengths
    else:
        ds.PixelData = encapsulate(frames, has_bot=table == "bot")
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def make_slide(table: str, base: int = 1024, tile: int = 256, levels: int = 3, seed: int = 1,
               distinct_tiles: int | None = None, quality: int = 85,
               row: dict | None = None) -> Slide:
    """A square slide of base pixels a side, halving per level (at least levels of them, each
    at least a tile), a thumbnail and a label; in the series of an index row (its PatientID,
    StudyInstanceUID and SeriesInstanceUID), if given. distinct_tiles: how many different tile
    images a level cycles through (None: every tile its own)."""
    if table not in OFFSET_TABLES:
        raise ValueError(f"offset table must be one of {OFFSET_TABLES}")
    rng = random.Random(seed)
    uids = {name: generate_uid(entropy_srcs=[str(seed), name])
            for name in ("study", "series", "frame", "specimen")} | {"patient": "SLIDE-1"}
    if row is not None:
        uids.update(patient=row["PatientID"], study=row["StudyInstanceUID"],
                    series=row["SeriesInstanceUID"])
    files: dict[str, bytes] = {}
    size = base
    for level in range(levels):
        across = -(-size // tile)
        count = across * across
        pool = [_tile(rng, tile, quality) for _ in range(min(count, distinct_tiles or count))]
        frames = [pool[i % len(pool)] for i in range(count)]
        kind = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if level == 0 else \
            ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
        files[f"level{level}.dcm"] = _level(uids, level + 1, kind, size, size, tile, frames, table,
                                            0.00025 * base / size)
        size = max(tile, size // 2)
    thumb_size = tile
    files["thumbnail.dcm"] = _level(uids, levels + 1, ["DERIVED", "PRIMARY", "THUMBNAIL", "RESAMPLED"],
                                    thumb_size, thumb_size, thumb_size,
                                    [_tile(rng, thumb_size, quality)], table,
                                    0.00025 * base / thumb_size)
    files["label.dcm"] = _level(uids, levels + 2, ["ORIGINAL", "PRIMARY", "LABEL", "NONE"],
                                tile, tile, tile, [_tile(rng, tile, quality)], table, 0.02)
    return Slide(files, levels, (base, base))
