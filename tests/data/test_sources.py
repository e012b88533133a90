"""Dataset adapters: real published tables and samples (skipped where absent) and tiny synthetic layouts."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hybridcxr.data.boxes import iou
from hybridcxr.data.schema import BOX_COLUMNS, STUDY_COLUMNS
from hybridcxr.data.sources import SOURCES, load_source
from hybridcxr.data.sources.pneumonia import patient_of
from hybridcxr.errors import DataWarning, DatasetError
from hybridcxr.findings import CHESTX_DET10, NIH14, NO_FINDING, PNEUMONIA, VINDR_CXR, VINDR_PCXR, VINDR_PCXR_LESIONS

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
NIH = DATA / "nih"

VINDR_COLUMNS = [
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture", "Consolidation",
    "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity", "Lung cavity", "Lung cyst",
    "Mediastinal shift", "Nodule/Mass", "Pleural effusion", "Pleural thickening", "Pneumothorax",
    "Pulmonary fibrosis", "Rib fracture", "Other lesion", "COPD", "Lung tumor", "Pneumonia", "Tuberculosis",
    "Other diseases", "No finding",
]


def _needs(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real sample data not present: {path} (../shared/data beside the repository)")
    return path


def _write_dicom(path: Path, *, patient_id: str | None, age: str, sex: str, rows: int = 24, cols: int = 20) -> None:
    """A tiny valid DX DICOM with the demographic header fields VinDr carries."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    if patient_id is not None:
        ds.PatientID = patient_id
    ds.PatientAge, ds.PatientSex, ds.ViewPosition = age, sex, "PA"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.zeros((rows, cols), dtype="<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _labels(rows: list[tuple[str, str | None, list[str]]], columns: list[str] = VINDR_COLUMNS) -> pd.DataFrame:
    """A wide image-label table: (image_id, reader or None, positive columns)."""
    out = []
    for image_id, reader, positive in rows:
        row = {"image_id": image_id, **({"rad_id": reader} if reader else {})}
        row.update({c: int(c in positive) for c in columns})
        out.append(row)
    return pd.DataFrame(out)


def _box(image_id: str, reader: str | None, name: str, box=(np.nan,) * 4) -> dict:
    return {"image_id": image_id, **({"rad_id": reader} if reader else {}), "class_name": name,
            **dict(zip(("x_min", "y_min", "x_max", "y_max"), box))}


@pytest.fixture
def vindr_root(tmp_path: Path) -> Path:
    """PhysioNet-layout VinDr-CXR: 2 train images x 3 readers, 1 test image (consensus, no rad_id column)."""
    root = tmp_path / "vindr"
    _write_dicom(root / "train" / "a1.dicom", patient_id="P1", age="045Y", sex="F", rows=30, cols=40)
    _write_dicom(root / "train" / "a2.dicom", patient_id="", age="003M", sex="M")
    _write_dicom(root / "test" / "b1.dicom", patient_id="P1", age="046Y", sex="F")
    ann = root / "annotations"
    ann.mkdir(parents=True)
    _labels([("a1", "R1", ["Cardiomegaly"]), ("a1", "R2", ["Cardiomegaly", "Rib fracture"]),
             ("a1", "R3", ["No finding"]), ("a2", "R1", ["No finding"]), ("a2", "R2", ["No finding"]),
             ("a2", "R4", ["Pleural effusion", "Pneumonia"])]).to_csv(ann / "image_labels_train.csv", index=False)
    test_columns = [c if c != "Other diseases" else "Other disease" for c in VINDR_COLUMNS]
    _labels([("b1", None, ["Nodule/Mass", "Other disease"])], test_columns).to_csv(
        ann / "image_labels_test.csv", index=False)
    pd.DataFrame([
        _box("a1", "R1", "Cardiomegaly", (5, 6, 25, 20)), _box("a1", "R2", "Cardiomegaly", (6, 6, 26, 21)),
        _box("a1", "R2", "Rib fracture", (1, 1, 3, 3)), _box("a1", "R3", "No finding"),
        _box("a2", "R1", "No finding"), _box("a2", "R2", "No finding"),
        _box("a2", "R4", "Pleural effusion", (1, 10, 9, 20)),
    ]).to_csv(ann / "annotations_train.csv", index=False)
    pd.DataFrame([_box("b1", None, "Nodule/Mass", (3, 3, 8, 8))]).to_csv(ann / "annotations_test.csv", index=False)
    return root


# ------------------------------------------------------------------------------------------ registry ---


def test_registry_names_and_unknown_source(tmp_path: Path) -> None:
    assert sorted(SOURCES) == ["chestx-det10", "coco", "nih", "pneumonia", "vindr-cxr", "vindr-pcxr"]
    with pytest.raises(DatasetError, match="known sources are .*vindr-cxr"):
        load_source("mimic", tmp_path)


# ----------------------------------------------------------------------------------------- VinDr-CXR ---


def test_vindr_kaggle_train_csv_from_torchxrayvision(tmp_path: Path) -> None:
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torchxrayvision (test-only dependency shipping the VinDr-CXR train.csv) is not installed")
    table = Path(list(spec.submodule_search_locations)[0]) / "data" / "vinbigdata-train.csv.gz"
    if not table.is_file():
        pytest.skip(f"{table} not shipped by this torchxrayvision version")
    raw = pd.read_csv(table)
    tables = load_source("vindr-cxr", tmp_path, labels=table, read_headers=False)
    studies, boxes = tables.studies, tables.boxes
    assert tables.findings == VINDR_CXR and len(tables.findings) == 14
    assert len(studies) == 15_000 and studies["image_id"].is_unique
    assert (studies["n_readers"] == 3).all()
    assert raw.groupby("image_id")["rad_id"].nunique().eq(3).all()
    no_finding = raw["class_name"] == NO_FINDING
    assert raw.loc[no_finding, ["x_min", "y_min", "x_max", "y_max"]].isna().all().all()
    assert len(boxes) + int(no_finding.sum()) == len(raw) == 67_914
    assert set(boxes["finding"]) == set(VINDR_CXR)
    assert boxes[["x_min", "y_min", "x_max", "y_max"]].notna().all().all()
    assert (studies["split"] == "train").all() and studies["path"].isna().all()
    assert "no patient ids: grouped by image" in tables.notes
    # an image is positive for a finding exactly when some reader boxed it (rule "any")
    boxed = boxes.groupby("finding")["image_id"].nunique()
    assert (studies[list(VINDR_CXR)].sum() == boxed.reindex(VINDR_CXR)).all()


def test_vindr_physionet_headers_labels_and_boxes(vindr_root: Path) -> None:
    tables = load_source("vindr-cxr", vindr_root)
    s = tables.studies.set_index("image_id")
    assert list(tables.studies.columns[: len(STUDY_COLUMNS)]) == list(STUDY_COLUMNS)
    assert s.loc["a1", "patient_id"] == "P1" and s.loc["b1", "patient_id"] == "P1"
    assert s.loc["a2", "patient_id"] == "a2"  # empty PatientID: grouped by image
    assert s.loc["a1", "age_years"] == 45 and s.loc["a2", "age_years"] == pytest.approx(0.25)
    assert list(s["sex"]) == ["F", "M", "F"] and (s["view"] == "PA").all()
    assert (s.loc["a1", "width"], s.loc["a1", "height"]) == (40, 30)
    assert dict(s["split"]) == {"a1": "train", "a2": "train", "b1": "test"}
    assert Path(s.loc["b1", "path"]).is_file()
    assert s.loc["a1", "Cardiomegaly"] == 1 and s.loc["a2", "Pleural effusion"] == 1
    assert s.loc["b1", "Nodule/Mass"] == 1 and dict(s["n_readers"]) == {"a1": 3, "a2": 3, "b1": 1}
    assert dict(s["no_finding"]) == {"a1": 1, "a2": 1, "b1": 0}
    assert "Pneumonia" not in s.columns and "Rib fracture" not in s.columns
    assert list(tables.boxes.columns) == list(BOX_COLUMNS)
    assert len(tables.boxes) == 4  # Rib fracture (outside the 14) and "No finding" rows carry no box
    assert set(tables.boxes.loc[tables.boxes["image_id"] == "b1", "reader"]) == {"consensus"}
    majority = load_source("vindr-cxr", vindr_root, label_rule="majority").studies.set_index("image_id")
    assert majority.loc["a1", "Cardiomegaly"] == 1 and majority.loc["a2", "Pleural effusion"] == 0


def test_vindr_without_headers_and_kaggle_layout(vindr_root: Path, tmp_path: Path) -> None:
    tables = load_source("vindr-cxr", vindr_root, read_headers=False)
    assert tables.studies["age_years"].isna().all()
    assert (tables.studies["patient_id"] == tables.studies["image_id"]).all()
    kaggle = tmp_path / "kaggle"
    (kaggle / "train").mkdir(parents=True)
    pd.DataFrame([
        {**_box("k1", "R1", "Aortic enlargement", (1, 2, 3, 4)), "class_id": 0},
        {**_box("k1", "R2", "No finding"), "class_id": 14},
    ]).to_csv(kaggle / "train.csv", index=False)
    sizes = tmp_path / "train_info.csv"
    pd.DataFrame({"image_id": ["k1"], "width": [3000], "height": [2500]}).to_csv(sizes, index=False)
    out = load_source("vindr-cxr", kaggle, sizes=sizes)
    assert out.notes[0] == "kaggle layout"
    row = out.studies.iloc[0]
    assert (row["Aortic enlargement"], row["no_finding"], row["width"], row["height"]) == (1, 1, 3000, 2500)


def test_vindr_phantom_round_trip(tmp_path: Path) -> None:
    phantom = pytest.importorskip("hybridcxr.data.phantom")
    summary = phantom.make_phantom_dataset(tmp_path / "ph", n=6, size=(128, 128))
    tables = load_source("vindr-cxr", tmp_path / "ph")
    assert len(tables.studies) == summary.n_train + summary.n_test
    assert tables.studies["path"].notna().all() and tables.studies["age_years"].notna().any()
    assert tables.studies["patient_id"].nunique() == summary.n_patients
    assert (len(tables.boxes) > 0) == (summary.boxes > 0) and set(tables.boxes["finding"]) <= set(VINDR_CXR)


# ---------------------------------------------------------------------------------------- VinDr-PCXR ---


@pytest.fixture
def pcxr_root(tmp_path: Path) -> Path:
    """VinDr-PCXR: c1 boxed with a lesion that has an adult name and two that have none, c2 read normal, c3
    boxed only with a lesion that has no adult name; only c1 is on disk."""
    root = tmp_path / "pcxr"
    _write_dicom(root / "train" / "c1.dicom", patient_id=None, age="002Y", sex="M")
    cols = [*VINDR_PCXR, NO_FINDING]
    labels = _labels([("c1", "R1", ["Bronchiolitis"]), ("c2", "R2", ["No finding"]), ("c3", "R1", ["CPAM"])], cols)
    labels.rename(columns={"rad_id": "rad_ID"}).to_csv(root / "image_labels_train.csv", index=False)
    pd.DataFrame([_box("c1", "R1", "Other nodule/mass", (1, 2, 5, 6)),
                  _box("c1", "R1", "Bronchial thickening", (2, 2, 9, 9)),
                  _box("c1", "R1", "Boot-shaped heart", (3, 4, 12, 10)),
                  _box("c2", "R2", "No finding"),
                  _box("c3", "R1", "Lung cyst", (4, 4, 8, 8))]).to_csv(root / "annotations_train.csv", index=False)
    return root


def test_vindr_pcxr_diagnoses(pcxr_root: Path) -> None:
    diag = load_source("vindr-pcxr", pcxr_root)
    s = diag.studies.set_index("image_id")
    assert diag.findings == VINDR_PCXR and diag.boxes.empty
    assert s.loc["c1", "Bronchiolitis"] == 1 and s.loc["c2", "no_finding"] == 1 and s.loc["c3", "no_finding"] == 0
    assert s.loc["c1", "age_years"] == 2 and s.loc["c1", "patient_id"] == "c1" and s.loc["c2", "path"] is None
    assert "no patient ids: grouped by image" in diag.notes
    assert "4 lesion boxes not returned: lesions are not diagnoses (findings='lesions' returns them)" in diag.notes


def test_vindr_pcxr_lesions_keep_all_36_under_their_own_names(pcxr_root: Path) -> None:
    lesions = load_source("vindr-pcxr", pcxr_root, findings="lesions")
    assert lesions.findings == VINDR_PCXR_LESIONS and len(VINDR_PCXR_LESIONS) == len(set(VINDR_PCXR_LESIONS)) == 36
    assert sorted(map(tuple, lesions.boxes[["image_id", "finding"]].values.tolist())) == [
        ("c1", "Boot-shaped heart"), ("c1", "Bronchial thickening"), ("c1", "Other nodule/mass"), ("c3", "Lung cyst")]
    s = lesions.studies.set_index("image_id")
    assert {*VINDR_PCXR_LESIONS, "no_finding"} <= set(s.columns) and not set(VINDR_PCXR) & set(s.columns)
    assert s.loc["c1", ["Other nodule/mass", "Bronchial thickening", "Boot-shaped heart"]].tolist() == [1, 1, 1]
    assert "Nodule/Mass" not in s.columns  # no adult name in this view
    assert s[list(VINDR_PCXR_LESIONS)].sum().sum() == 4  # one label per boxed lesion, nothing else
    assert s["no_finding"].to_dict() == {"c1": 0, "c2": 1, "c3": 0}  # no lesion boxed: c2 only
    assert not any("counterpart" in n for n in lesions.notes)


def test_vindr_pcxr_lesions_adult_maps_onto_vindr_cxr_and_drops_the_rest(pcxr_root: Path) -> None:
    adult = load_source("vindr-pcxr", pcxr_root, findings="lesions-adult")
    assert adult.findings == VINDR_CXR
    assert adult.boxes[["image_id", "finding", "reader"]].values.tolist() == [["c1", "Nodule/Mass", "R1"]]
    s = adult.studies.set_index("image_id")
    assert s.loc["c1", "Nodule/Mass"] == 1 and s[list(VINDR_CXR)].sum().sum() == 1
    assert s["no_finding"].to_dict() == {"c1": 0, "c2": 1, "c3": 1}  # c3's only lesion has no adult name
    assert any("3 boxes of lesions without a VinDr-CXR counterpart" in n for n in adult.notes)


def test_vindr_pcxr_unknown_view_is_named(pcxr_root: Path) -> None:
    with pytest.raises(ValueError, match="diagnoses, lesions, lesions-adult, not 'lesion'"):
        load_source("vindr-pcxr", pcxr_root, findings="lesion")


# ------------------------------------------------------------------------------------------------ NIH ---


def test_nih_sample_with_chestx_det10_second_reader() -> None:
    _needs(NIH / "images")
    _needs(NIH / "images-512")
    tables = load_source("nih", NIH, labels=NIH / "nih_labels.csv", boxes=NIH / "nih_bbox_list.csv",
                         extra_boxes=[NIH / "chestx_det10_boxes.json"])
    s = tables.studies.set_index("image_id")
    assert len(s) == 477 and tables.findings == NIH14 and len(tables.findings) == 14
    assert s["age_years"].notna().all() and s["sex"].isin(["M", "F"]).all()
    assert s["patient_id"].is_unique  # one image per patient in this sample
    assert s.loc["00002578_000", "patient_id"] == "00002578"
    assert s.loc["00002578_000", "Nodule"] == 1 and s.loc["00002578_000", "no_finding"] == 0
    # sizes are the files': 28 originals at 1024, 449 downscaled copies at 512
    assert (s["width"] == 1024).sum() == 28 and (s["width"] == 512).sum() == 449
    nodules = tables.boxes[(tables.boxes["image_id"] == "00002578_000") & (tables.boxes["finding"] == "Nodule")]
    nih = nodules[nodules["reader"] == "nih"][["x_min", "y_min", "x_max", "y_max"]].values
    det = nodules[nodules["reader"] == "chestx-det10"][["x_min", "y_min", "x_max", "y_max"]].values
    assert len(nih) == 1 and len(det) == 2
    best = max(iou(nih[0], d) for d in det)
    assert best > 0.35  # 0.38: the ChestX-Det10 box lies inside NIH's larger one
    assert set(tables.boxes["finding"]) <= set(NIH14)  # Calcification/Fracture left out
    assert "Infiltration" in set(tables.boxes["finding"])  # BBox_List's "Infiltrate"
    assert (tables.boxes["x_max"] <= 1024).all()


def test_nih_downscaled_copy_rescales_boxes_and_drops_missing(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "nih"
    (root / "images_001" / "images").mkdir(parents=True)
    Image.new("L", (512, 512)).save(root / "images_001" / "images" / "00000001_000.png")
    pd.DataFrame({"Image Index": ["00000001_000.png", "00000002_000.png"],
                  "Finding Labels": ["Mass|Effusion", "No Finding"], "Patient ID": [1, 2],
                  "Patient Age": [60, 411], "Patient Gender": ["M", "F"], "View Position": ["PA", "AP"]}
                 ).to_csv(root / "Data_Entry_2017_v2020.csv", index=False)
    pd.DataFrame({"Image Index": ["00000001_000.png"], "Finding Label": ["Mass"], "Bbox [x": [100.0],
                  "y": [200.0], "w": [50.0], "h]": [40.0]}).to_csv(root / "BBox_List_2017.csv", index=False)
    (root / "test_list.txt").write_text("00000001_000.png\n")
    with pytest.warns(DataWarning, match="411"):
        tables = load_source("nih", root)
    row = tables.studies.iloc[0]
    assert len(tables.studies) == 1 and (row["Mass"], row["Effusion"], row["split"]) == (1, 1, "test")
    assert (row["width"], row["patient_id"]) == (512, "00000001")
    assert tables.boxes[["x_min", "y_min", "x_max", "y_max"]].values.tolist() == [[50, 100, 75, 120]]
    assert any("1 of 2 images" in n and "dropped" in n for n in tables.notes)
    assert any("rescaled" in n for n in tables.notes)


# --------------------------------------------------------------------------------------- ChestX-Det10 ---


def test_chestx_det10_patient_ids_from_nih_names() -> None:
    _needs(NIH / "chestx_det10_boxes.json")
    tables = load_source("chestx-det10", NIH, boxes=NIH / "chestx_det10_boxes.json")
    s = tables.studies.set_index("image_id")
    assert tables.findings == CHESTX_DET10 and len(s) == 8
    assert s.loc["00003421_000", "patient_id"] == "00003421" and s.loc["00003421_000", "Fracture"] == 1
    assert s.loc["00000493_000", list(CHESTX_DET10)].sum() == 0  # listed without boxes
    assert s.loc["00002578_000", "split"] == "test" and s["path"].notna().all()
    assert set(tables.boxes["reader"]) == {"chestx-det10"} and len(tables.boxes) == 46


def test_chestx_det10_unknown_class_warns_and_drops(tmp_path: Path) -> None:
    data = [{"file_name": "x1.png", "syms": ["Nodule", "Cardiomegaly"], "boxes": [[1, 2, 3, 4], [2, 2, 9, 9]]}]
    (tmp_path / "train.json").write_text(json.dumps(data))
    with pytest.warns(DataWarning, match=r"train.json: unknown labels dropped: 'Cardiomegaly' x1"):
        tables = load_source("chestx-det10", tmp_path)
    assert tables.boxes["finding"].tolist() == ["Nodule"]
    assert "no patient ids: grouped by image" in tables.notes


# ------------------------------------------------------------------------------------------ pneumonia ---


def test_pneumonia_folders_patients_and_subtypes(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "chest_xray"
    files = {"train/PNEUMONIA/person1_bacteria_1.jpeg", "train/PNEUMONIA/person1_virus_6.jpeg",
             "train/NORMAL/IM-0115-0001.jpeg", "train/NORMAL/NORMAL2-IM-1427-0001.jpeg",
             "val/NORMAL/NORMAL2-IM-1430-0001.jpeg", "test/PNEUMONIA/person100_bacteria_475.jpeg",
             "chest_xray/train/NORMAL/IM-0115-0001.jpeg", "__MACOSX/train/NORMAL/IM-0115-0001.jpeg"}
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (16, 12)).save(root / name)
    tables = load_source("pneumonia", root, read_sizes=True)
    s = tables.studies.set_index("image_id")
    assert tables.findings == PNEUMONIA and tables.boxes.empty and len(s) == 6
    assert s.loc["person1_virus_6", "patient_id"] == s.loc["person1_bacteria_1", "patient_id"] == "person1"
    assert dict(s["pneumonia_type"])["person1_virus_6"] == "viral"
    assert s.loc["IM-0115-0001", "patient_id"] == "IM-0115" and s.loc["IM-0115-0001", "Pneumonia"] == 0
    assert s.loc["NORMAL2-IM-1430-0001", "split"] == "val" and s.loc["person100_bacteria_475", "split"] == "test"
    assert (s["width"] == 16).all()
    assert any("val split has only 1" in n for n in tables.notes)
    assert any("duplicate copies" in n for n in tables.notes)
    assert patient_of("BACTERIA-1008087-0001") == ("1008087", "bacterial")


# ----------------------------------------------------------------------------------------------- COCO ---


def test_coco_tbx11k() -> None:
    root = _needs(DATA / "tbx11k")
    tables = load_source("coco", root)
    s = tables.studies.set_index("image_id")
    assert tables.findings == ("ActiveTuberculosis", "ObsoletePulmonaryTuberculosis", "PulmonaryTuberculosis")
    assert len(s) == 3 and s["path"].notna().all() and (s["split"] == "train").all()
    assert s.loc["tb0007", "ObsoletePulmonaryTuberculosis"] == 1 and s.loc["h0001"].iloc[-3:].sum() == 0
    assert len(tables.boxes) == 3 and set(tables.boxes["reader"]) == {"coco"}


def test_coco_covid_lungs_rescales_boxes_of_shrunken_files() -> None:
    root = _needs(DATA / "covid-lungs")
    tables = load_source("coco", root, labels=root / "metadata.csv")
    s = tables.studies.set_index("image_id")
    assert tables.findings == ("Right Lung", "Left Lung") and len(s) == 11
    assert (s.loc["ciaa199.pdf-001-b", "width"], s.loc["ciaa199.pdf-001-b", "height"]) == (362, 330)
    assert s["sex"].notna().all() and s["age_years"].notna().all()
    assert s.loc["1-s2.0-S1684118220300608-main.pdf-001", "patient_id"] == "59"
    b = tables.boxes.merge(tables.studies[["image_id", "width", "height"]], on="image_id")
    assert (b["x_max"] <= b["width"] + 1).all() and (b["y_max"] <= b["height"] + 1).all()
    assert any("ciaa199.pdf-001-b" in n and "rescaled" in n for n in tables.notes)


# --------------------------------------------------------------------------------------------- errors ---


def test_missing_table_names_the_file(tmp_path: Path, vindr_root: Path) -> None:
    with pytest.raises(DatasetError, match="nope.csv: .*not found"):
        load_source("nih", tmp_path, labels="nope.csv")
    (vindr_root / "annotations" / "annotations_test.csv").unlink()
    with pytest.raises(DatasetError, match="annotations_test.csv"):
        load_source("vindr-cxr", vindr_root)
    with pytest.raises(DatasetError, match="image_labels_train.csv"):
        load_source("vindr-pcxr", tmp_path)
    with pytest.raises(DatasetError, match="root folder not found"):
        load_source("pneumonia", tmp_path / "absent")


def test_empty_table_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "Data_Entry_2017.csv").write_text("")
    with pytest.raises(DatasetError, match="Data_Entry_2017.csv: .*empty"):
        load_source("nih", tmp_path)
    (tmp_path / "train.csv").write_text("image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n")
    with pytest.raises(DatasetError, match="train.csv: .*empty"):
        load_source("vindr-cxr", tmp_path, layout="kaggle")


def test_unknown_label_warns_once_and_is_dropped(vindr_root: Path) -> None:
    path = vindr_root / "annotations" / "annotations_train.csv"
    table = pd.read_csv(path)
    extra = pd.DataFrame([_box("a1", "R1", "Alien", (1, 1, 2, 2)), _box("a2", "R1", "Alien", (1, 1, 2, 2))])
    pd.concat([table, extra]).to_csv(path, index=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tables = load_source("vindr-cxr", vindr_root, read_headers=False)
    found = [w for w in caught if issubclass(w.category, DataWarning)]
    assert len(found) == 1 and "annotations_train.csv" in str(found[0].message)
    assert "'Alien' x2" in str(found[0].message)
    assert "Alien" not in set(tables.boxes["finding"])


def test_missing_columns_are_named(tmp_path: Path) -> None:
    pd.DataFrame({"Image Index": ["a.png"], "Labels": ["Mass"]}).to_csv(tmp_path / "Data_Entry_2017.csv")
    with pytest.raises(DatasetError, match=r"lacks columns \['Finding Labels'\]"):
        load_source("nih", tmp_path)
