"""Chapter 6's sanity checks and verdicts (``06b_sanity``): do the maps change when what the
model learned is taken away, and do they find lesions where the location prior cannot help?

* :func:`cascade_curves`: Adebayo et al.'s cascading model randomisation on a subset of pairs,
  one tidy row per (setting, step, method): the maps' rank correlation with the trained
  model's (mean over pairs, report-bootstrap CI) and the hit rate, with each step's health.
* :func:`randomised_copies`: every setting with its whole tower re-drawn (one copy per seed
  of :data:`COPY_SEEDS`), its Grad-CAM hits on the setting's pairs and its health
  (:func:`explain.randomisation_health`).
* :func:`sanity_table`: trained minus the mean of copies A, copies B minus copies A (the
  negative control, :func:`copy_noise`), the cascade's final correlation and, for the
  fine-tune, trained minus the permuted-label model.
* :func:`off_prior_scores`: every setting and its randomised copies on the off-prior test
  pairs (:mod:`helpers.saliency.offprior`).
* :func:`sanity_findings`: the finding records (:mod:`helpers.analysis.findings`) of the
  location-prior, model-randomisation and data-randomisation checks, each a paired difference
  against its negative control on the same report resamples (:func:`versus`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from torch import nn

from helpers.analysis import findings
from helpers.analysis.findings import Comparison
from helpers.analysis.estimate import Estimate, frame_columns, table_record
from helpers.analysis.metrics import bootstrap_stat
from helpers.book.study import LocPairs
from helpers.saliency import offprior, regions
from helpers.saliency.attribution import ONE_PASS
from helpers.saliency.explain import cascade, explain_pairs, randomisation_health, randomised
from helpers.saliency.offprior import OffPrior
from helpers.saliency.positive_control import ControlConfig
from helpers.saliency.settings import CamSettings
from helpers.book.artefacts import write_result

CHAPTER = "06b_sanity"
COPY_SEEDS = (0, 1, 2, 3, 4, 5)
"""Seeds of the randomised copies of every setting."""
FINDING_COPIES = (0, 1, 2)
"""Copies whose mean a trained setting is compared with."""
CONTROL_COPIES = (3, 4, 5)
"""Copies whose mean, against the mean of :data:`FINDING_COPIES`, is the negative control: two
groups of towers that learned nothing. Averaging three copies per side cuts the noise of
re-drawing a tower, which with one copy per side was as large as the margin."""


def copy_mean(per_seed: Mapping[tuple[str, int], np.ndarray], key: str,
              seeds: Sequence[int]) -> np.ndarray:
    """Per-pair mean (n,) of a setting's copies' values over ``seeds``."""
    return np.mean([per_seed[(key, s)] for s in seeds], axis=0)
ALL_PAIRS = " (all test pairs)"
"""Suffix of the exploratory rows read on all test pairs, where the renderer favours the prior."""


def versus(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, pairs: LocPairs,
           n_boot: int) -> Comparison:
    """The paired test of mean(a − b) (the finding) against mean(c − d) (its
    control), all per-pair values (n,) on ``pairs``, on the same report resamples."""
    finding = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    control = np.asarray(c, dtype=float) - np.asarray(d, dtype=float)
    return findings.compare(lambda i: float(finding[i].mean()),
                            lambda i: float(control[i].mean()),
                            pairs.table.report_id.to_numpy(), n_boot)


def mean_estimate(values: np.ndarray, pairs: LocPairs, n_boot: int) -> Estimate:
    """The mean of per-pair ``values`` (n,) with its 95% CI over the pairs' reports."""
    v = np.asarray(values, dtype=float)
    return bootstrap_stat(lambda i: float(v[i].mean()), pairs.table.report_id.to_numpy(),
                          n_boot)


# --------------------------------------------------------------------------------------
# Cascading randomisation
# --------------------------------------------------------------------------------------


def cascade_curves(cs: CamSettings, pairs: LocPairs, n_boot: int
                   ) -> tuple[pd.DataFrame, dict[tuple[str, str], dict]]:
    """The cascade of every cascade setting on ``pairs``.

    Returns (curves, health). ``curves``: one row per (setting, step, method) with columns
    ``setting``, ``step`` (``trained`` first, then the re-drawn part, top down), ``method``,
    ``spearman`` and ``spearman_lo``/``spearman_hi`` (mean rank correlation of the step's maps
    with the trained model's over pairs whose correlation is defined, 95% CI over reports;
    NaN for a failed step or fewer than two defined pairs), ``n_defined``, ``failed_step`` and
    ``hit_rate`` (None for a failed step). ``health``: (setting, step) -> the step's
    :func:`explain.randomisation_health`.
    """
    rows, health = [], {}
    groups = pairs.table.report_id.to_numpy()
    for key in cs.cascade_keys() if len(pairs) else []:
        trained = cs.scorers[key]
        orig = cs.explain(key, pairs, scorer=trained, small=True)
        steps = [("trained", orig)]
        for step, copy in cascade(trained, seed=0):
            e = cs.explain(key, pairs, scorer=copy, small=True)
            health[(key, step)] = randomisation_health(
                trained, copy, cs.study, pairs, e.stats["gradcam"]["degenerate"],
                cs.pixels.get(key))
            steps.append((step, e))
        for step, e in steps:
            failed = health.get((key, step), {}).get("failed", False)
            for m in ONE_PASS:
                rho = regions.rank_correlation(orig.small[m], e.small[m])
                ok = np.isfinite(rho)
                mean = Estimate(None)
                if ok.sum() > 1 and not failed:
                    mean = bootstrap_stat(lambda i, r=rho[ok]: float(r[i].mean()),
                                          groups[ok], n_boot)
                rows.append({"setting": key, "step": step, "method": m,
                             **frame_columns("spearman", mean), "n_defined": int(ok.sum()),
                             "failed_step": failed,
                             "hit_rate": None if failed else float(e.stats[m]["hit"].mean())})
    return pd.DataFrame(rows), health


# --------------------------------------------------------------------------------------
# Randomised copies of every setting
# --------------------------------------------------------------------------------------


@dataclass
class Randomised:
    """A setting with its whole tower re-drawn: the copy, its Grad-CAM hits on the setting's
    pairs (n,) and its health (:func:`explain.randomisation_health`)."""

    model: nn.Module
    hits: np.ndarray
    health: dict

    @property
    def failed(self) -> bool:
        return bool(self.health["failed"])


def randomised_copies(cs: CamSettings, seeds: Sequence[int] = COPY_SEEDS
                      ) -> dict[tuple[str, int], Randomised]:
    """Every setting's randomised copies, keyed (setting, seed)."""
    out = {}
    for key, trained in cs.scorers.items():
        for seed in seeds:
            copy = randomised(trained, seed=seed)
            e = cs.explain(key, cs.scored[key], ("gradcam",), scorer=copy)
            out[(key, seed)] = Randomised(copy, e.stats["gradcam"]["hit"], randomisation_health(
                trained, copy, cs.study, cs.scored[key], e.stats["gradcam"]["degenerate"],
                cs.pixels.get(key)))
    return out


def copy_hits(copies: Mapping[tuple[str, int], "Randomised"], key: str,
              seeds: Sequence[int]) -> np.ndarray:
    """Per-pair Grad-CAM hit (n,) of a setting's copies, averaged over ``seeds``."""
    return copy_mean({k: c.hits for k, c in copies.items()}, key, seeds)


def copies_ok(copies: Mapping[tuple[str, int], Randomised], key: str) -> bool:
    """Whether both randomised copies of a setting passed their health check."""
    return not any(copies[(key, s)].failed for s in COPY_SEEDS)


def final_spearman(curves: pd.DataFrame, key: str) -> Estimate:
    """Grad-CAM's rank correlation with the trained maps after the whole cascade (missing
    when the setting was not cascaded)."""
    last = curves[(curves.setting == key) & (curves.method == "gradcam")] if len(curves) else curves
    if not len(last):
        return Estimate(None)
    r = last.iloc[-1]
    return Estimate.from_row(r, "spearman")


def copy_noise(cs: CamSettings, copies: Mapping[tuple[str, int], Randomised],
               n_boot: int) -> dict[str, Estimate]:
    """Per setting, the negative control of model randomisation: mean hit of copies B minus
    copies A over its pairs, with its 95% CI over reports."""
    return {key: regions.paired_gain(copy_hits(copies, key, CONTROL_COPIES),
                                     copy_hits(copies, key, FINDING_COPIES),
                                     cs.scored[key].table.report_id.to_numpy(), n_boot)
            for key in cs.scorers}


def sanity_table(cs: CamSettings, hits: Mapping[str, np.ndarray],
                 copies: Mapping[tuple[str, int], Randomised], curves: pd.DataFrame,
                 n_boot: int) -> pd.DataFrame:
    """Per setting: trained − copies A, copies B − copies A (:func:`copy_noise`), the final
    Spearman of the cascade, (fine-tune) trained − permuted-label model, each with its 95% CI,
    and the copies' health."""
    rows, noise = {}, copy_noise(cs, copies, n_boot)
    for key in cs.scorers:
        groups = cs.scored[key].table.report_id.to_numpy()
        h0 = copy_hits(copies, key, FINDING_COPIES)
        cells = {"trained − copies A": regions.paired_gain(hits[key], h0, groups, n_boot),
                 "copies B − copies A": noise[key],
                 "final Spearman": final_spearman(curves, key)}
        if key == "ft" and "ft-permuted" in hits:
            cells["trained − permuted-label model"] = regions.paired_gain(
                hits["ft"], hits["ft-permuted"], groups, n_boot)
        row = {name: e.format(signed=True) for name, e in cells.items()}
        failed = [s for s in COPY_SEEDS if copies[(key, s)].failed]
        worst = max(copies[(key, s)].health["degenerate_share"] for s in COPY_SEEDS)
        row["randomised copies"] = (f"failed: seeds {failed}" if failed else
                                    f"{len(COPY_SEEDS)} ok, at most {worst:.0%} degenerate")
        rows[cs.names[key]] = row
    return pd.DataFrame(rows).T


# --------------------------------------------------------------------------------------
# Off the prior
# --------------------------------------------------------------------------------------


@dataclass
class OffPriorScores:
    """Grad-CAM on the off-prior pairs: every setting's hits (``hits``, (n,)), its randomised
    copies' (``randomised``, keyed (setting, seed)), the location prior's (``prior_hit``), the
    grid chance level (``chance``) and the fine-tune's maps of the first pairs (``maps``)."""

    off: OffPrior
    hits: dict[str, np.ndarray]
    randomised: dict[tuple[str, int], np.ndarray]
    prior_hit: np.ndarray
    chance: np.ndarray
    maps: np.ndarray

    @property
    def pairs(self) -> LocPairs:
        return self.off.pairs

    @property
    def bar(self) -> np.ndarray:
        """Per pair, what a map must beat: the better of the prior's hit and the grid chance
        level (the off-prior pairs were selected for the prior to miss them)."""
        return np.maximum(self.prior_hit, self.chance)

    def mean(self, values: np.ndarray, n_boot: int) -> Estimate:
        """The mean of per-pair ``values`` with its 95% CI over off-prior reports."""
        return mean_estimate(values, self.pairs, n_boot)

    def table(self, cs: CamSettings, n_boot: int) -> pd.DataFrame:
        """Per setting: hit rate, its randomised copies', the prior's and the grid chance
        level, each with its 95% CI."""
        def cell(values: np.ndarray) -> str:
            return self.mean(values, n_boot).format()

        t = pd.DataFrame({cs.names[k]: {
            "hit rate": cell(self.hits[k]),
            "randomised copies A": cell(copy_mean(self.randomised, k, FINDING_COPIES)),
            "randomised copies B": cell(copy_mean(self.randomised, k, CONTROL_COPIES))}
            for k in self.hits}).T
        t["location prior"] = cell(self.prior_hit)
        t["chance level (grid)"] = cell(self.chance)
        return t


def off_prior_scores(cs: CamSettings, copies: Mapping[tuple[str, int], Randomised],
                     control_config: ControlConfig | None, n_keep: int = 4
                     ) -> OffPriorScores | None:
    """Every setting and its randomised copies on as many off-prior pairs as there are base
    pairs (``demo`` only: ``None`` without a location prior or pairs). The positive control
    sees the off-prior images marked, as it sees every image; the fine-tune's maps of the
    first ``n_keep`` pairs are kept."""
    if cs.prior is None or not len(cs.base):
        return None
    off = offprior.off_prior_pairs(cs.study, cs.prior, n_pairs=len(cs.base))
    if not len(off.pairs):
        return None
    keep = np.arange(min(n_keep, len(off.pairs)))
    hits, rand, maps = {}, {}, np.zeros((0,))
    for key, trained in cs.scorers.items():
        px = off.marked(cs.study.labels, control_config) if key == "control" else off.pixels
        kw = dict(layer=cs.layers[key], progress=False, pixels=px)
        e = explain_off(trained, cs, off, keep if key == "ft" else (), **kw)
        hits[key] = e.stats["gradcam"]["hit"]
        if key == "ft":
            maps = e.kept["gradcam"]
        for seed in COPY_SEEDS:
            rand[(key, seed)] = explain_off(copies[(key, seed)].model, cs, off, (),
                                            **kw).stats["gradcam"]["hit"]
    size = cs.study.info.image_size
    prior_hit = regions.pointing_game(regions.prior_maps(cs.prior, off.pairs.table.label, size),
                                      off.pairs.masks)
    return OffPriorScores(off, hits, rand, prior_hit, regions.grid_chance(off.pairs.masks, cs.grid),
                          maps)


def explain_off(scorer: nn.Module, cs: CamSettings, off: OffPrior, keep: Sequence[int], **kw):
    """Grad-CAM of ``scorer`` on the off-prior pairs (their rows index ``off``'s images)."""
    return explain_pairs(scorer, cs.study, off.pairs, ("gradcam",), keep=keep, **kw)


def label_mix(cs: CamSettings, scores: OffPriorScores) -> pd.DataFrame:
    """Per label: test pairs scored, pairs examined in fresh renders, how many were off the
    prior, how many off-prior pairs were scored, and the off-prior share, most often off
    first."""
    off = scores.off
    mix = pd.DataFrame({"test pairs (scored above)": cs.base.table.label.value_counts(),
                        "examined (fresh renders)": pd.Series(off.examined_by_label),
                        "of them off-prior": pd.Series(off.found_by_label),
                        "off-prior pairs scored": off.pairs.table.label.value_counts()})
    mix = mix.fillna(0).astype(int)
    mix["off-prior share"] = mix["of them off-prior"] / mix["examined (fresh renders)"]
    return mix.sort_values("off-prior share", ascending=False)


# --------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------


def sanity_findings(cs: CamSettings, hits: Mapping[str, np.ndarray],
                    prior_hits: np.ndarray | None, copies: Mapping[tuple[str, int], Randomised],
                    curves: pd.DataFrame, off: OffPriorScores | None, n_boot: int
                    ) -> list[dict]:
    """The finding records of the sanity checks, for every setting whose randomised copies
    are healthy: beats the location prior on off-prior pairs (against its randomised copy on
    the same pairs), the same on all test pairs (exploratory, labelled), model
    randomisation (trained against copies A; control copies B against copies A) and, for the
    fine-tune, data randomisation (against the permuted-label model). ``prior_hits``: the
    location prior's per-pair hit on the base pairs (``None`` without a prior)."""
    recs = []
    for key in cs.scorers:
        if not copies_ok(copies, key):
            continue
        pairs, name = cs.scored[key], cs.names[key]
        h0, h1 = copy_hits(copies, key, FINDING_COPIES), copy_hits(copies, key, CONTROL_COPIES)
        if off is not None and key in off.hits:
            recs.append(findings.record(
                f"{key}: beats the location prior", CHAPTER,
                f"{name} Grad-CAM maps hit more often than the better of the location "
                "prior and the grid chance level, on off-prior test pairs (lesions away from "
                "the prior's mass)",
                versus(off.hits[key], off.bar, copy_mean(off.randomised, key, FINDING_COPIES),
                       off.bar, off.pairs, n_boot), {"above": 0.0},
                "its randomised copies (mean of three) against the same bar, on the same "
                "off-prior pairs",
                n=len(off.pairs), pairs="off-prior"))
        if prior_hits is not None:
            recs.append(findings.record(
                f"{key}: beats the location prior{ALL_PAIRS}", CHAPTER,
                f"{name} Grad-CAM maps hit more often than the location prior on all test "
                "pairs, where lesions lie where the prior puts its mass",
                versus(hits[key], prior_hits, h0, prior_hits, pairs, n_boot), {"above": 0.0},
                "its randomised copies (mean of three) against the location prior",
                margin=findings.declared(f"{key}: beats the location prior").margin,
                n=len(pairs), pairs="all test pairs"))
        recs.append(findings.record(
            f"{key}: model randomisation", CHAPTER,
            f"{name} Grad-CAM maps hit more often than its randomised copies'",
            versus(hits[key], h0, h1, h0, pairs, n_boot), {"above": 0.0},
            "randomised copies B against copies A (means of three)", n=len(pairs),
            final_spearman=final_spearman(curves, key).value))
    if "ft-permuted" in hits and "ft" in cs.scorers and copies_ok(copies, "ft"):
        pairs = cs.scored["ft"]
        h0 = copy_hits(copies, "ft", FINDING_COPIES)
        h1 = copy_hits(copies, "ft", CONTROL_COPIES)
        recs.append(findings.record(
            "ft: data randomisation", CHAPTER,
            "fine-tuned Grad-CAM maps hit more often than those of the model fine-tuned on "
            "permuted labels", versus(hits["ft"], hits["ft-permuted"], h1, h0, pairs, n_boot),
            {"above": 0.0}, "randomised copies B against copies A (means of three)",
            n=len(pairs)))
    return recs


def verdict_text(recs: Sequence[dict], finding_id: str, copies_failed: bool = False) -> str:
    """One finding's verdict for the prose: the verdict, its estimate and its difference from
    the control with CIs and the margin; or why it was not tested."""
    r = next((r for r in recs if r["finding"] == finding_id), None)
    if r is None:
        return ("not tested: a randomised copy failed its check" if copies_failed
                else "not tested in this profile")
    estimate, difference = Estimate.read(r), Estimate.read(r["difference"])
    return (f"{r['verdict']} (estimate {estimate.format(signed=True)}; "
            f"difference from its control {difference.format(signed=True)}, margin "
            f"{r['margin']:g})")


def control_reading(records: Sequence[dict], cs: CamSettings, off: OffPriorScores | None) -> str:
    """What the positive control's off-prior verdict says about every other verdict."""
    rec = next((r for r in records if r["finding"] == "control: beats the location prior"), None)
    if rec is None:
        return ("no positive control in this profile: a failing setting cannot be told apart "
                "from a method that cannot show localisation")
    if rec["holds"]:
        return ("the positive control's Grad-CAM maps beat the location prior and the grid "
                "chance level on the off-prior pairs, by the margin over their randomised "
                "copy, at this layer: the method can show localisation here even where the "
                "usual place is no help, so a setting that fails is a statement about the "
                "setting")
    hit = off.hits["control"].mean() if off is not None else float("nan")
    copy = (copy_mean(off.randomised, "control", FINDING_COPIES).mean() if off is not None
            else float("nan"))
    return ("the positive control's own Grad-CAM maps do not beat the bar on the off-prior "
            f"pairs by the margin over their randomised copy (hit {hit:.3f} against the "
            f"copies' {copy:.3f}; {rec['verdict']}): at this layer Grad-CAM cannot be shown "
            "to report localisation even where it certainly exists, so the settings' "
            "Grad-CAM verdicts say nothing about where they look")


def data_randomisation_reading(records: Sequence[dict]) -> str:
    """The fine-tune against its permuted-label twin, read in words from its record."""
    rec = next((r for r in records if r["finding"] == "ft: data randomisation"), None)
    if rec is None:
        return "Not tested in this run (no permuted-label model, or a failed randomised copy)."
    gain = Estimate.read(rec)
    said = f"fine-tuned minus permuted-label hit rate {gain.format(signed=True)}"
    if gain.below(0):
        return (f"Its maps hit more often than the fine-tuned model's ({said}). Labels "
                "that carry no information still change the tower, and the real labels' "
                "model localises worse than that. Why is not tested here (one possibility: "
                "such a run learns image structure, which on phantoms lies where the lesions "
                "are). The check fails in the direction that matters: the fine-tune's maps "
                "are not explained by what its labels taught it.")
    if gain.above(0):
        return (f"Its maps hit less often than the fine-tuned model's ({said}): the real "
                "labels taught the tower something its maps show. The verdict above says "
                "whether the difference clears the margin against the randomised copies.")
    return (f"Its maps and the fine-tuned model's cannot be told apart ({said}): the real "
            "labels add nothing to where the maps point that labels without information "
            "do not.")


def cascade_row(row: Mapping) -> dict:
    """A row of the cascade's curves as stored: the mean Spearman as a table of estimates
    (``spearman`` with its interval under ``ci95``), missing numbers as ``None``."""
    rest = {k: None if isinstance(v, float) and not np.isfinite(v) else v
            for k, v in row.items() if k not in ("spearman", "spearman_lo", "spearman_hi")}
    return {**rest, **table_record({"spearman": Estimate.from_row(row, "spearman")})}


def write_record(path, cs: CamSettings, curves: pd.DataFrame,
                 step_health: Mapping[tuple[str, str], dict],
                 copies: Mapping[tuple[str, int], Randomised], off: OffPriorScores | None,
                 stamp: dict, params: dict):
    """The sanity page's JSON record: the cascade's curves and step health, the randomised
    copies' health, and the off-prior selection and scores, with the stamp and parameters."""
    off_rec = None
    if off is not None:
        o = off.off
        off_rec = {
            "n_pairs": len(o.pairs), "n_rendered": o.n_rendered, "n_examined": o.n_examined,
            "top_mass": offprior.TOP_MASS, "max_overlap": offprior.MAX_OVERLAP,
            "examined_by_label": o.examined_by_label, "off_prior_by_label": o.found_by_label,
            "labels": o.pairs.table.label.value_counts().to_dict(),
            "location_prior_hit": float(off.prior_hit.mean()),
            "grid_chance": float(off.chance.mean()), "bar": float(off.bar.mean()),
            "gradcam_hit": {k: float(v.mean()) for k, v in off.hits.items()},
            "randomised_hit": [{"setting": k, "seed": s, "hit": float(v.mean())}
                               for (k, s), v in off.randomised.items()]}
    return write_result(
        path, "grad_cam_sanity", stamp, params,
        cascade=[cascade_row(row) for row in curves.to_dict(orient="records")],
        cascade_health=[{"setting": k, "step": step, **h}
                        for (k, step), h in step_health.items()],
        randomised_copies=[{"setting": k, "seed": s, **c.health}
                           for (k, s), c in copies.items()],
        names=cs.names, off_prior=off_rec)


def copies_alike_reading(same_share: Sequence[float], objective: str) -> str:
    """The probe's and the fine-tune's randomised copies compared, in words: ``same_share``
    is, per copy seed, the share of pairs on which the two copies score the same hit."""
    shares = (f"{min(same_share):.0%}" if len(set(same_share)) == 1 else
              f"{min(same_share):.0%} to {max(same_share):.0%}")
    start = ("LP-FT, whose head starts from the probe's" if objective == "lp-ft"
             else f"objective {objective}")
    if all(v == 1.0 for v in same_share):
        verdict = "The two rows are one control, not two."
    elif all(v >= 0.9 for v in same_share):
        verdict = "The two rows are nearly one control, not two."
    else:
        verdict = "The two rows are two controls."
    return (f"The probe's and the fine-tune's randomised copies score the same hit on "
            f"{shares} of the pairs (each of {len(same_share)} seeds): each copy "
            "is a linear read-out of the same re-drawn tower (same architecture, same seed), "
            f"and the fine-tune was trained as {start}. {verdict}")


def noisy_controls(cs: CamSettings, copies: Mapping[tuple[str, int], Randomised],
                   n_boot: int) -> str:
    """The settings whose two groups of randomised copies differ (the 95% CI of
    :func:`copy_noise` excludes 0), with that difference; or ``"none"``."""
    return "; ".join(f"{cs.names[key]}, {noise.format(signed=True)}"
                     for key, noise in copy_noise(cs, copies, n_boot).items()
                     if noise.above(0) or noise.below(0)) or "none"
