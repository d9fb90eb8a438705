"""Loader counts on the real IU-Xray package data, bad input, view inference and the split."""

import numpy as np
import pandas as pd
import pytest

from helpers.data import iuxray as D
from helpers.data import labels as L


def test_real_reports_counts(label_table):
    rep = label_table.load_report
    assert rep.n_xml == 3955 and rep.n_reports == 3955 and rep.malformed == []
    # images as shipped: every parentImage id of every report, one row each
    assert len(label_table.images) == 7470
    assert label_table.images.image_id.is_unique
    assert len(label_table.reports) == 3955
    assert label_table.reports.n_images.sum() == 7470
    # counted, not dropped
    assert len(rep.reports_without_images) == (label_table.reports.n_images == 0).sum() > 0
    assert len(rep.reports_without_text) > 0
    assert set(L.CHEXPERT_LABELS) <= set(label_table.images.columns)
    assert label_table.images[list(L.CHEXPERT_LABELS)].isin([0, 1]).all().all()


def test_views_are_inferred_not_dropped(label_table):
    im = label_table.images
    assert set(im.view) <= set(D.VIEW_VALUES)
    assert (im.view_source == "none").sum() == (im.view == "UNKNOWN").sum()
    # inference fills most images whose DICOM tag is missing
    missing_tag = im.dicom_view.isna()
    assert (im.view[missing_tag] != "UNKNOWN").mean() > 0.9


def test_infer_views_rules():
    df = pd.DataFrame({
        "image_id": ["a1", "a2", "b1", "b2", "c1", "d1"],
        "report_id": ["A", "A", "B", "B", "C", "D"],
        "dicom_view": ["PA", np.nan, np.nan, np.nan, "PA", np.nan],
        "orientation": [np.nan, np.nan, np.nan, np.nan, np.nan, "['A', 'F']"],
        "tsne_view": [np.nan, np.nan, "L", np.nan, "L", np.nan],
    })
    out = D.infer_views(df).set_index("image_id")
    assert out.loc["a1", "view"] == "PA" and out.loc["a1", "view_source"] == "dicom"
    assert out.loc["a2", "view"] == "LATERAL" and out.loc["a2", "view_source"] == "report-pair"
    assert out.loc["b2", "view"] == "FRONTAL" and out.loc["b2", "view_source"] == "report-pair"
    assert out.loc["c1", "view"] == "LATERAL" and out.loc["c1", "view_source"] == "pixels"
    assert out.loc["d1", "view"] == "LATERAL" and out.loc["d1", "view_source"] == "orientation"


def test_malformed_xml_is_skipped_counted_and_warned(tiny_archive):
    with pytest.warns(UserWarning, match="3.xml"):
        reports, rep = D.load_reports(tiny_archive)
    assert rep.n_xml == 3 and rep.n_reports == 2
    assert rep.malformed == ["ecgen-radiology/3.xml"]
    assert reports.report_id.tolist() == ["CXR1", "CXR2"]


def test_missing_archive_names_the_path(tmp_path):
    p = tmp_path / "nope.tgz"
    with pytest.raises(FileNotFoundError, match="nope.tgz"):
        D.load_reports(p)


def test_unreadable_archive_names_the_path(tmp_path):
    p = tmp_path / "broken.tgz"
    p.write_bytes(b"this is not a tar file")
    with pytest.raises(ValueError, match="broken.tgz.*gzipped tar"):
        D.load_reports(p)


def test_bad_policy_is_rejected(data_env):
    with pytest.raises(ValueError, match="uncertain_policy"):
        D.build_label_table(uncertain_policy="sometimes")


@pytest.fixture(scope="module")
def split(label_table):
    return D.make_split(label_table.images, seed=0)


def test_split_has_no_report_in_two_splits(split):
    per_report = split.groupby("report_id").split.nunique()
    assert (per_report == 1).all()


def test_split_fractions_and_views(split, label_table):
    assert set(split.view) <= set(D.FRONTAL_VIEWS)
    n = split.groupby("split", observed=True).report_id.nunique()
    frac = n / n.sum()
    assert frac["train"] == pytest.approx(0.7, abs=0.02)
    assert frac["val"] == pytest.approx(0.1, abs=0.02)
    assert frac["test"] == pytest.approx(0.2, abs=0.02)
    # the split holds exactly the selected frontal images: one per report
    im = label_table.images
    assert set(split.image_id) == set(im.image_id[im.frontal_selected])
    assert split.report_id.is_unique


def test_view_options(label_table):
    im = label_table.images
    assert len(D.make_split(im, views="all")) == len(im)
    assert len(D.make_split(im, views="frontal-any")) == im.view.isin(D.FRONTAL_VIEWS).sum()
    pa = D.make_split(im, views=["PA"])
    assert set(pa.view) == {"PA"} and pa.image_id.isin(im.image_id[im.frontal_selected]).all()
    lat = D.make_split(im, views="lateral")
    assert set(lat.view) == {"LATERAL"} and len(lat) == (im.view == "LATERAL").sum()


# ---- view audit invariants (real package data) -----------------------------------------
def test_view_audit_counts_add_up(label_table):
    im = label_table.images
    audit = D.view_audit(im)
    n_reports = im.report_id.nunique()
    per = audit["per_report"]
    for col in per.columns:
        assert per[col].iloc[:3].sum() == n_reports, col
    assert per.loc["frontal images", "before selection"] == im.view.isin(D.FRONTAL_VIEWS).sum()
    assert per.loc["frontal images", "after selection"] == im.frontal_selected.sum()
    assert audit["by_source"].loc["total", "total"] == len(im)
    rules = audit["rules"]
    assert rules.reports.sum() == n_reports
    assert rules["frontal kept"].sum() == im.frontal_selected.sum()
    assert rules[["frontal kept", "frontal dropped"]].sum().sum() == im.view.isin(D.FRONTAL_VIEWS).sum()
    # selection only removes: reports with a candidate keep one, the others stay at 0
    assert per.loc["reports with 0 frontal images"].nunique() == 1


def test_at_most_one_frontal_per_report_unless_pixels_say_more(label_table):
    im = label_table.images
    sel = im[im.frontal_selected]
    assert sel.view.isin(D.FRONTAL_VIEWS).all()
    n = sel.groupby("report_id").size()
    several = sel[sel.report_id.isin(n[n > 1].index)]
    assert (several.view_source == "pixels").all()
    assert (several.view_rule == "several pixel-confirmed").all()
    # a pixel-confirmed frontal is never passed over for a weaker one
    rank = im.view_source.map(D.EVIDENCE_RANK)
    cand = im.assign(rank=rank)[im.view.isin(D.FRONTAL_VIEWS)]
    best = cand.groupby("report_id")["rank"].transform("max")
    assert (cand["rank"][cand.frontal_selected] == best[cand.frontal_selected]).all()


def test_select_frontals_rules():
    df = pd.DataFrame({
        "image_id": ["a-1001", "a-2001", "b-12012", "b-4004", "c-1", "d-1", "e-1", "e-2"],
        "report_id": ["A", "A", "B", "B", "C", "D", "E", "E"],
        "view": ["FRONTAL", "PA", "AP", "AP", "PA", "LATERAL", "FRONTAL", "PA"],
        "view_source": ["pixels", "dicom", "dicom", "dicom", "orientation", "pixels", "pixels",
                        "pixels"],
    })
    out = D.select_frontals(df).set_index("image_id")
    assert out.frontal_selected.to_dict() == {
        "a-1001": True, "a-2001": False, "b-12012": False, "b-4004": True, "c-1": True,
        "d-1": False, "e-1": True, "e-2": True}
    rule = out.groupby("report_id").view_rule.first().to_dict()
    assert rule == {"A": "stronger evidence", "B": "tie: first image id", "C": "only candidate",
                    "D": "no frontal candidate", "E": "several pixel-confirmed"}


def test_label_table_hash_carries_the_version(data_env, label_table, monkeypatch):
    monkeypatch.setattr(D, "LABEL_TABLE_VERSION", "test-bump")
    assert D.build_label_table().hash != label_table.hash


def test_every_label_in_every_split_where_possible(split):
    rep = split.groupby(["split", "report_id"], observed=True)[list(L.CHEXPERT_LABELS)].max()
    per_split = rep.groupby(level="split", observed=True).sum()
    total = per_split.sum()
    for label in L.CHEXPERT_LABELS:
        if total[label] >= 3:  # possible: at least one positive report per split
            assert (per_split[label] > 0).all(), label


def test_split_is_deterministic_and_seeded(label_table, split):
    again = D.make_split(label_table.images, seed=0)
    pd.testing.assert_frame_equal(split, again)
    other = D.make_split(label_table.images, seed=1)
    assert not split.set_index("image_id").split.equals(other.set_index("image_id").split.loc[split.image_id])


def test_save_split_hash_is_content_hash(split, tmp_path):
    p1, h1 = D.save_split(split, tmp_path)
    p2, h2 = D.save_split(split.sample(frac=1, random_state=0).sort_values(["split", "image_id"]), tmp_path)
    assert h1 == h2 and p1 == p2 and p1.name == f"split-{h1}.csv"
    assert (tmp_path / "split.csv").read_bytes() == p1.read_bytes()


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.7, 0.2, 0.2), (0.9, 0.1, 0.0)])
def test_bad_fractions_are_rejected(label_table, fractions):
    with pytest.raises(ValueError, match="fractions"):
        D.make_split(label_table.images, fractions=fractions)


def test_unknown_view_is_rejected(label_table):
    with pytest.raises(ValueError, match="unknown view 'oblique'"):
        D.make_split(label_table.images, views=["oblique"])


def test_label_cache_is_reused(data_env, label_table, monkeypatch):
    calls = []
    orig = D.label_reports
    monkeypatch.setattr(D, "label_reports", lambda *a, **k: calls.append(1) or orig(*a, **k))
    again = D.build_label_table()
    assert calls == []  # served from the cache written by the session fixture
    assert again.hash == label_table.hash


def test_views_matching_nothing_are_rejected():
    df = pd.DataFrame({"image_id": ["a"], "report_id": ["A"], "view": ["LATERAL"],
                       "view_source": ["pixels"], "No Finding": [1]})
    with pytest.raises(ValueError, match="no image matches views='frontal'"):
        D.make_split(df, views="frontal", label_names=["No Finding"])
