"""The papermill runner: parameter checking happens before anything executes."""

import json
import re
from pathlib import Path

import pytest

from helpers.book import runner as R


def test_toc_order_starts_with_data_chapter():
    chapters = R.toc_chapters()
    assert chapters[0] == "01_data"
    for c in chapters:
        assert R.notebook_path(c).exists()


def test_chapters_reading_the_study_data_declare_its_parameters():
    """Chapters 1 and 1b build the label table and split themselves (``load_study_data(``, which
    the runner's :func:`loads_study` check does not see): each declares every data parameter it
    passes, so ``-p split_seed 3`` reaches both instead of one silently using the default."""
    readers = []
    for c in R.toc_chapters():
        nb = R.read_notebook(R.notebook_path(c))
        if any(x.cell_type == "code" and "load_study_data(" in x.source for x in nb.cells):
            readers.append(c)
            decl = R.declared_parameters(nb)
            missing = [p for p in P.DATA_PARAMETERS if p != "image_dir" and p not in decl]
            assert not missing, f"{c} reads the study data without declaring {missing}"
    assert readers[:2] == ["01_data", "01b_phantoms"]


def test_declared_parameters_of_chapter_1():
    params = R.declared_parameters(R.read_notebook(R.notebook_path("01_data")))
    assert params["profile"].default == "demo"
    assert params["split_seed"].default == 0
    assert params["split_fractions"].default == [0.7, 0.1, 0.2]
    assert "U-Ones" in params["uncertain_policy"].comment


def test_unknown_parameter_is_named_with_valid_ones(capsys):
    rc = R.main(["01_data", "-p", "n_exmaples", "2"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "'n_exmaples'" in err and "n_examples" in err and "split_seed" in err


def test_wrong_type_is_named(capsys):
    rc = R.main(["01_data", "-p", "split_seed", "zero"])
    err = capsys.readouterr().err
    assert rc == 2 and "'split_seed'" in err and "int" in err


def test_unknown_profile_lists_valid_ones(capsys):
    rc = R.main(["01_data", "--profile", "fast"])
    err = capsys.readouterr().err
    assert rc == 2 and "'fast'" in err and "demo" in err and "full" in err


def test_unknown_chapter_lists_chapters(capsys):
    rc = R.main(["99_nothing"])
    err = capsys.readouterr().err
    assert rc == 2 and "01_data" in err


@pytest.mark.parametrize("default,raw,expected", [
    (3, "4", 4), (0.5, "1e-3", 1e-3), (True, "false", False), ("a", "b", "b"),
    ([0.7, 0.1, 0.2], "[0.8, 0.1, 0.1]", [0.8, 0.1, 0.1]), (["frontal"], "PA,AP", ["PA", "AP"]),
])
def test_coerce(default, raw, expected):
    assert R.coerce(R.Param("x", default, ""), raw) == expected


def test_resolve_gives_profile_to_every_chapter():
    out = R.resolve_parameters(["01_data"], [("n_examples", "1")], "full")
    assert out == {"01_data": {"profile": "full", "n_examples": 1}}


# --- bullet 3: every parameter checked before anything runs ----------------------------------

from helpers.book import params as P  # noqa: E402


@pytest.mark.parametrize("chapter,name,value,expect", [
    ("02_zero_shot", "limit", "-5", r"'limit': value -5 is out of range; valid: in \[0, 100000\]"),
    ("02_zero_shot", "seed_threshold", "nan", r"'seed_threshold': value nan is not a finite number"),
    ("02_zero_shot", "n_boot", "0", r"'n_boot': value 0 is out of range; valid: in \[1, 100000\]"),
    ("04_fine_tune", "lr", "inf", r"'lr': value inf is not a finite number"),
    ("04_fine_tune", "lr", "-0.001", r"'lr': value -0.001 is out of range"),
    ("02_zero_shot", "on_error", "ignore", r"'on_error': value 'ignore' is not allowed; valid: one of stop, skip"),
    ("02_zero_shot", "style", "nonsense", r"one of source, target"),
    ("01_data", "uncertain_policy", "maybe", r"one of positive, negative"),
    ("04_fine_tune", "objective", "mse", r"one of sweep, contrastive, bce, lp-ft"),
    ("01_data", "split_fractions", "[0.5, 0.6, -0.1]", r"'split_fractions'"),
    ("01_data", "split_fractions", "0.5,0.5", r"2 element"),
    ("01_data", "views", "sideways", r"'sideways' is not allowed"),
    ("05_embeddings", "highlight", "Heart Big", r"'Heart Big' is not allowed"),
    ("02_zero_shot", "model", "gpt", r"'model'.*local-dir:PATH"),
    ("01_data", "reports_path", "no/such/file.tgz", r"'reports_path': file 'no/such/file.tgz' does not exist"),
])
def test_bad_values_are_refused_before_anything_runs(capsys, monkeypatch, chapter, name, value, expect):
    monkeypatch.setattr(R, "execute", lambda *a, **k: pytest.fail("a chapter ran"))
    assert R.main([chapter, "-p", name, value]) == 2
    assert re.search(expect, capsys.readouterr().err)


def test_every_declared_parameter_has_a_rule_and_its_default_passes():
    for c in R.toc_chapters():
        for p in R.declared_parameters(R.read_notebook(R.notebook_path(c))).values():
            if p.name == "profile":
                continue
            items = p.default if isinstance(p.default, list) else [p.default]
            if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in items):
                assert p.name in P.RANGES, f"{c}: add a range for {p.name!r} to helpers/book/params.py"
            elif all(isinstance(x, str) for x in items):
                assert p.name in {**P.CHOICES, **P.PATTERNS, **P.PATHS} or p.name in P.FREE, \
                    f"{c}: add choices, a pattern or a path rule for {p.name!r} to helpers/book/params.py"
            assert P.check(p.name, p.default) == p.default, f"{c}: default of {p.name!r} breaks its own rule"
    for name in P.CHOICES:
        assert P.choices(name), name


def test_data_parameter_is_refused_when_a_chapter_would_ignore_it(monkeypatch):
    """Every chapter that loads the study declares the data parameters today; a chapter that
    loaded the study without declaring one would silently keep the default, so the runner
    refuses before anything executes (simulated by hiding the declaration in two chapters)."""
    real_declared, real_read = R.declared_parameters, R.read_notebook
    undeclaring = []  # notebooks read for 02_zero_shot and 06_grad_cam

    def remember(path):
        nb = real_read(path)
        if Path(path).stem in ("02_zero_shot", "06_grad_cam"):
            undeclaring.append(nb)
        return nb

    def without_policy(nb):
        d = dict(real_declared(nb))
        if any(nb is u for u in undeclaring):
            d.pop("uncertain_policy", None)
        return d

    monkeypatch.setattr(R, "declared_parameters", without_policy)
    monkeypatch.setattr(R, "read_notebook", remember)
    chapters = R.toc_chapters()
    with pytest.raises(R.ParameterError) as err:
        R.resolve_parameters(chapters, [("uncertain_policy", "negative")], "demo")
    msg = str(err.value)
    assert "'uncertain_policy' changes the data" in msg
    assert "but 02_zero_shot, 06_grad_cam load the study" in msg
    out = R.resolve_parameters(["01_data"], [("uncertain_policy", "negative")], "demo")
    assert out["01_data"]["uncertain_policy"] == "negative"


def test_data_parameter_reaches_every_chapter_that_declares_it(monkeypatch):
    real = R.declared_parameters

    def with_policy(nb):
        d = real(nb)
        if d:
            d.setdefault("uncertain_policy", R.Param("uncertain_policy", "positive", ""))
        return d

    monkeypatch.setattr(R, "declared_parameters", with_policy)
    chapters = R.toc_chapters()
    out = R.resolve_parameters(chapters, [("uncertain_policy", "negative")], "demo")
    using = [c for c in chapters if R.loads_study(R.read_notebook(R.notebook_path(c)))]
    assert len(using) >= 5 and all(out[c]["uncertain_policy"] == "negative" for c in using)


def test_path_parameters_become_absolute(tmp_path, monkeypatch):
    (tmp_path / "r.tgz").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    out = R.resolve_parameters(["01_data"], [("reports_path", "r.tgz")], "demo")
    assert out["01_data"]["reports_path"] == str(tmp_path / "r.tgz")


def test_list_params_shows_valid_values(capsys):
    assert R.main(["02_zero_shot", "04_fine_tune", "--list-params"]) == 0
    out = capsys.readouterr().out
    assert "on_error = 'stop'  (str; one of stop, skip)" in out
    assert "limit = 0  (int; in [0, 100000])" in out and "seed_threshold = 0.5  (float; in [0, 1])" in out
    assert "(str; one of sweep, contrastive, bce, lp-ft" in out


def test_hints_name_only_parameters_that_exist():
    from helpers.config import REPO_ROOT

    declared = {p for c in R.toc_chapters() for p in R.declared_parameters(R.read_notebook(R.notebook_path(c)))}
    files = [*sorted((REPO_ROOT / "helpers").rglob("*.py")), *sorted((REPO_ROOT / "notebooks").glob("*.py")),
             REPO_ROOT / "README.md"]
    texts = [f.read_text() for f in files]
    named = {m for t in texts for m in re.findall(r"-p ([a-z_]+) ", t)} - {"name"}
    assert named and named <= declared, f"hints name undeclared parameters: {sorted(named - declared)}"


# --- bullet 7: entry points fail with one message, never a traceback; --help gives defaults ----


def _parsers():
    from helpers.protocols import distributed, pretrain
    from helpers.data import download

    sub = distributed.build_parser()._subparsers._group_actions[0].choices["finetune"]
    return {"run": R.build_parser(), "download": download.build_parser(), "pretrain": pretrain.build_parser(),
            "distributed finetune": sub}


def test_every_option_states_its_default():
    for name, ap in _parsers().items():
        for a in ap._actions:
            if a.dest == "help":
                continue
            assert a.help and "default" in a.help, f"{name}: {'/'.join(a.option_strings) or a.dest} has no default"


@pytest.mark.parametrize("argv", [["--lr", "nan"], ["--n-samples", "10"], ["--epochs", "0"], ["--device", "tpu"]])
def test_pretrain_bad_options_are_one_message(capsys, argv):
    from helpers.protocols import pretrain

    assert pretrain.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


@pytest.mark.parametrize("argv,expect", [([], "not started by torchrun"), (["--objective", "mse"], "--objective"),
                                         (["--limit", "-1"], "--limit"), (["--profile", "fast"], "unknown profile")])
def test_distributed_without_torchrun_or_bad_options_is_one_message(capsys, monkeypatch, argv, expect):
    from helpers.protocols import distributed

    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert distributed.main(["finetune", *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0]


def test_cli_error_in_a_real_process_has_no_traceback():
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "helpers.protocols.distributed", "finetune"], capture_output=True, text=True)
    assert p.returncode == 1 and "Traceback" not in p.stderr and "torchrun" in p.stderr


def test_failing_chapter_is_one_message(tmp_path, capsys, data_env):
    nb = tmp_path / "99_fails.py"
    nb.write_text("# ---\n# jupyter:\n#   kernelspec:\n#     display_name: Python 3\n#     language: python\n"
                  '#     name: python3\n# ---\n\n# %% tags=["parameters"]\nprofile = "demo"\n\n# %%\n1 / 0\n')
    assert R.main([str(nb), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "99_fails.py failed: ZeroDivisionError: division by zero" in err
    assert "99_fails.failed.ipynb" in err and "Traceback" not in err


def test_a_chapter_whose_upstream_ran_with_other_data_is_refused_before_it_runs(
        tmp_path, monkeypatch, capsys):
    """The documented cheap re-run, on outputs where chapter 2 did not run with limit 200: refused
    before anything executes, with the command that runs both chapters with the same data."""
    monkeypatch.setenv("IUXRAY_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.setattr(R, "execute", lambda *a, **k: pytest.fail("a chapter started"))
    argv = ["03_linear_probe", "-p", "class_weight", "none", "-p", "limit", "200"]
    assert R.main(argv) == 2
    err = capsys.readouterr().err
    assert "02_zero_shot has not run" in err
    assert ("python -m helpers.book.runner 02_zero_shot 03_linear_probe --profile demo "
            "-p class_weight none -p limit 200") in err


def test_upstream_with_the_same_data_passes_and_other_data_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("IUXRAY_OUTPUT_DIR", str(tmp_path / "outputs"))
    chapters = ["03_linear_probe"]
    raw = [("limit", "200")]
    params = R.resolve_parameters(chapters, raw, "demo")
    plan = R.plan_outputs(chapters, params, "demo", tmp_path / "book")
    up = R.resolve_parameters(["02_zero_shot"], raw, "demo")
    up_plan = R.plan_outputs(["02_zero_shot"], up, "demo", tmp_path / "book")
    up_plan_folder = R._pair_folder("02_zero_shot", up["02_zero_shot"], up_plan, "demo")
    up_plan_folder.mkdir(parents=True)
    R.record_parameters("02_zero_shot", up["02_zero_shot"], up_plan, "demo")
    R.check_upstream(chapters, params, plan, "demo", raw)  # same data: no error
    other = R.resolve_parameters(chapters, [("limit", "200"), ("split_seed", "3")], "demo")
    with pytest.raises(R.UpstreamError, match=r"split_seed=0.*split_seed=3"):
        R.check_upstream(chapters, other, R.plan_outputs(chapters, other, "demo", tmp_path),
                         "demo", [("limit", "200"), ("split_seed", "3")])
    # running both together needs nothing recorded
    both = R.resolve_parameters(["02_zero_shot", "03_linear_probe"], raw, "demo")
    R.check_upstream(["02_zero_shot", "03_linear_probe"], both,
                     R.plan_outputs(["02_zero_shot", "03_linear_probe"], both, "demo", tmp_path),
                     "demo", raw)


def test_outputs_from_before_the_manifest_are_checked_on_their_recorded_parameters(
        tmp_path, monkeypatch):
    """An upstream metrics file with no manifest beside it (an earlier runner) is accepted when
    the parameters it recorded match, and named when they do not."""
    monkeypatch.setenv("IUXRAY_OUTPUT_DIR", str(tmp_path / "outputs"))
    chapters = ["03_linear_probe"]
    params = R.resolve_parameters(chapters, [], "demo")
    plan = R.plan_outputs(chapters, params, "demo", tmp_path / "book")
    folder = R._pair_folder("03_linear_probe", params["03_linear_probe"], plan, "demo")
    folder.mkdir(parents=True)
    (folder / "zero_shot.json").write_text(json.dumps(
        {"params": {"model": "tiny", "limit": 0, "split_seed": 0, "style": "target"}}))
    R.check_upstream(chapters, params, plan, "demo", [])
    (folder / "zero_shot.json").write_text(json.dumps({"params": {"limit": 40}}))
    with pytest.raises(R.UpstreamError, match="limit=40"):
        R.check_upstream(chapters, params, plan, "demo", [])


def test_every_chapter_declares_the_data_defaults_of_load_study():
    """One home for the data defaults: ``load_study``'s signature. A chapter that declared
    another default would run on other data than its neighbours at the defaults."""
    import inspect

    from helpers.book.study import load_study

    sig = inspect.signature(load_study).parameters
    views = sig["views"].default
    home = {"style": sig["style"].default, "uncertain_policy": sig["uncertain_policy"].default,
            "split_seed": sig["split_seed"].default, "on_error": sig["on_error"].default,
            "split_fractions": list(sig["split_fractions"].default),
            "views": [views] if isinstance(views, str) else list(views),
            "limit": 0, "model": "", "image_dir": "", "reports_path": ""}
    seen = set()
    for c in R.toc_chapters():
        decl = R.declared_parameters(R.read_notebook(R.notebook_path(c)))
        for name, want in home.items():
            if name in decl:
                seen.add(name)
                assert decl[name].default == want, (c, name, decl[name].default, want)
    assert seen == set(home)


def test_chapter_6_pages_declare_the_same_pairs_and_control():
    """06b reads 06's per-pair hits and cached control: their shared parameters have one
    default, and the runner compares them when 06b reads what 06 wrote (MATCHING)."""
    first, second = (R.declared_parameters(R.read_notebook(R.notebook_path(c)))
                     for c in ("06_grad_cam", "06b_sanity"))
    shared = ("max_pairs", "annotations", "k_folds", "control_epochs", "control_images")
    for name in shared:
        assert first[name].default == second[name].default, name
        assert name in R.MATCHING
