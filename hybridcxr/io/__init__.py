"""Reading radiographs: DICOM, PNG and JPEG into one :class:`Radiograph` contract."""

from hybridcxr.io.radiograph import Radiograph, RadiographMeta, image_id_of
from hybridcxr.io.read import read_metadata, read_radiograph

__all__ = ["Radiograph", "RadiographMeta", "image_id_of", "read_metadata", "read_radiograph"]
