"""Annotation CSVs: a byte-order mark is accepted; empty ids, non-finite or out-of-image
coordinates are refused with the file and line named, never clipped or silently dropped."""

import pytest

from helpers.data import annotations as A

HEADER = "image_id,label,shape,points\n"


def _csv(tmp_path, body: str, bom: bool = False):
    p = tmp_path / "ann.csv"
    p.write_bytes((b"\xef\xbb\xbf" if bom else b"") + (HEADER + body).encode())
    return p


def test_byte_order_mark_is_accepted(tmp_path):
    ann = A.load_annotations(_csv(tmp_path, 'X,Cardiomegaly,box,"1,1;5,5"\n', bom=True))
    assert ann.image_id.tolist() == ["X"] and ann.line.tolist() == [2]


@pytest.mark.parametrize("points", ['"nan,1;5,5"', '"1,1;inf,5"', '"1,1;5,-inf"'])
def test_non_finite_coordinates_are_refused_with_the_line(tmp_path, points):
    p = _csv(tmp_path, f'X,Cardiomegaly,box,"1,1;5,5"\nY,Edema,box,{points}\n')
    with pytest.raises(A.AnnotationError, match=r"ann\.csv, line 3: coordinates must be finite"):
        A.load_annotations(p)


def test_empty_image_id_is_refused_with_the_line(tmp_path):
    with pytest.raises(A.AnnotationError, match=r"line 2: empty image_id"):
        A.load_annotations(_csv(tmp_path, ' ,Cardiomegaly,box,"1,1;5,5"\n'))


def test_shape_without_area_is_refused(tmp_path):
    with pytest.raises(A.AnnotationError, match=r"line 2: the polygon .* encloses no area"):
        A.load_annotations(_csv(tmp_path, 'X,Edema,polygon,"1,1;2,2;3,3"\n'))


def test_region_outside_the_image_is_refused_not_clipped(tmp_path):
    ann = A.load_annotations(_csv(tmp_path, 'X,Cardiomegaly,box,"10,10;20,20"\nX,Edema,box,"100,100;5000,900"\n'))
    assert A.rasterize(ann.iloc[:1], 64, 64).sum() == 11 * 11
    with pytest.raises(A.AnnotationError, match=r"ann\.csv, line 3 \(X\).*outside the image \(1024x1024"):
        A.rasterize(ann, 1024, 1024)
    assert A.rasterize(ann.iloc[1:], 5000, 900).any()  # on the edge is inside


def test_example_file_still_loads():
    ann = A.load_annotations(A.EXAMPLE)
    assert len(ann) >= 2 and set(ann["shape"]) == {"box", "polygon"}
