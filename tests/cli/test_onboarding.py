"""certrisk init, policy check and score on a small wine classifier: what they write and print,
and the errors that name what is wrong."""

from __future__ import annotations

import json

import pytest
import yaml

from certrisk.schemas.policy import load_policy

FAST = ("--no-calibrate", "--n", "200", "--sweep-samples", "16", "--sigmas", "0.25,0.5")


@pytest.fixture(scope="module")
def drafted(wine_files, tmp_path_factory):
    """``certrisk init`` on the TorchScript wine model (no calibration run: the slow test does it)."""
    from typer.testing import CliRunner

    from certrisk.cli import app

    out_dir = tmp_path_factory.mktemp("init")
    args = ["init", "--model", wine_files.torchscript, "--reference", wine_files.reference, "--out", out_dir,
            "--classes", "class_0,class_1,class_2", *FAST]  # fmt: skip
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return out_dir, result


def test_init_writes_a_valid_policy_and_dag_and_prints_the_sweep(drafted, wine_files):
    out_dir, result = drafted
    policy = load_policy(out_dir / "policy.yaml").policy
    assert policy.model.input_shape == (wine_files.n_features,) and policy.model.format == "torchscript"
    assert policy.model.classes == ("class_0", "class_1", "class_2")
    assert policy.certification.smoothing.sigma in (0.25, 0.5) and policy.rules.profile
    assert "sigma 0.25" in result.stdout and "sigma 0.5" in result.stdout and "<- chosen" in result.stdout
    assert "accuracy" in result.stdout and "abstention" in result.stdout
    dag = (out_dir / "wine_risk.py").read_text()
    assert 'dag_id="wine_risk"' in dag and "policy.yaml" in dag
    compile(dag, "wine_risk.py", "exec")
    for step in (
        "certrisk policy check",
        "certrisk score",
        "airflow dags reserialize",
        "airflow dags test wine_risk",
    ):
        assert step in result.stdout


def test_init_refuses_to_overwrite_and_sigma_overrides(cli, drafted, wine_files):
    out_dir, _ = drafted
    args = (
        "init",
        "--model",
        wine_files.torchscript,
        "--reference",
        wine_files.reference,
        "--out",
        out_dir,
        *FAST,
    )
    out = cli(*args)
    assert out.exit_code == 2 and "already exists" in out.stderr and "--force" in out.stderr
    out = cli(*args, "--force", "--sigma", "0.3")
    assert out.exit_code == 0, out.output
    assert load_policy(out_dir / "policy.yaml").policy.certification.smoothing.sigma == 0.3


def test_init_with_a_registered_factory(cli, wine_files, tmp_path):
    kwargs = json.dumps({"n_features": 13, "num_classes": 3, "hidden": 16})
    out = cli("init", "--model", wine_files.safetensors, "--reference", wine_files.reference, "--out", tmp_path,
              "--factory", "tabular_mlp", "--factory-kwargs", kwargs, *FAST)  # fmt: skip
    assert out.exit_code == 0, out.output
    model = load_policy(tmp_path / "policy.yaml").policy.model
    # the entry-point name is written as the module:function target it names
    assert model.format == "safetensors" and model.factory == "certrisk.risk.models:tabular_mlp"
    assert model.factory_kwargs["hidden"] == 16
    # interval bounds and the Lipschitz bound apply to a plain nn.Sequential
    methods = [str(m.method) for m in load_policy(tmp_path / "policy.yaml").policy.certification.methods]
    assert methods == ["smoothing", "ibp", "lipschitz"]


def test_init_refuses_an_unregistered_factory_before_importing_it(cli, wine_files, tmp_path):
    out = cli("init", "--model", wine_files.safetensors, "--reference", wine_files.reference, "--out", tmp_path,
              "--factory", "os:system", *FAST)  # fmt: skip
    assert out.exit_code == 2
    assert "CERTRISK_FACTORY_MODULES" in out.stderr and "certrisk.models" in out.stderr
    assert not (tmp_path / "policy.yaml").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model": "missing.pt"}, "model file not found"),
        ({"reference": "missing.parquet"}, "batch file not found"),
        ({"classes": "a,b"}, "--classes names 2 classes but the model gives 3 logits"),
        ({"input_shape": "13,1"}, "does not accept one input of shape [13, 1]"),
        ({"label_column": "target"}, "needs a label column 'target'"),
    ],
)
def test_init_errors_name_what_is_wrong(cli, wine_files, tmp_path, change, message):
    opts = {"model": wine_files.torchscript, "reference": wine_files.reference}
    opts.update({k: (tmp_path / v if k in ("model", "reference") else v) for k, v in change.items()})
    args = [x for k, v in opts.items() for x in (f"--{k.replace('_', '-')}", v)]
    out = cli("init", *args, "--out", tmp_path / "out", *FAST)
    assert out.exit_code == 2, out.output
    assert message in out.stderr
    assert not (tmp_path / "out").exists()


def test_policy_check_reports_accuracy_and_speed(cli, drafted):
    out_dir, _ = drafted
    out = cli("policy", "check", out_dir / "policy.yaml", "--samples", "4")
    assert out.exit_code == 0, out.output
    assert "valid" in out.stdout and "gives 3 logits" in out.stdout and "reference accuracy" in out.stdout
    assert "s per 1,000 samples" in out.stdout
    data = json.loads(
        cli("policy", "check", out_dir / "policy.yaml", "--samples", "4", "--format", "json").stdout
    )
    assert 0.0 <= data["reference_accuracy"] <= 1.0 and data["seconds_per_1000"] > 0
    assert data["n_checked"] == 4 and data["methods"][0]["method"] == "smoothing"


def _variant(out_dir, tmp_path, edit) -> str:
    doc = yaml.safe_load((out_dir / "policy.yaml").read_text())
    doc["model"]["path"] = str((out_dir / doc["model"]["path"]).resolve())
    doc["data"]["reference"] = str((out_dir / doc["data"]["reference"]).resolve())
    edit(doc)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_policy_check_errors(cli, drafted, tmp_path):
    out_dir, _ = drafted
    out = cli("policy", "check", tmp_path / "nope.yaml")
    assert out.exit_code == 2 and "cannot read policy file" in out.stderr
    bad_key = _variant(out_dir, tmp_path, lambda d: d["model"].update(colour="red"))
    out = cli("policy", "check", bad_key)
    assert out.exit_code == 2 and "unknown key 'model.colour'" in out.stderr
    two = _variant(out_dir, tmp_path, lambda d: d["model"].update(classes=["a", "b"]))
    out = cli("policy", "check", two)
    assert out.exit_code == 2 and "model output has shape (1, 3)" in out.stderr


def test_a_bad_factory_fails_the_first_task_before_anything_is_staged(
    cli, drafted, wine_files, tmp_path, monkeypatch
):
    """The DAG's validate task runs the same model check: score (the operators in-process) stops there."""
    out_dir, _ = drafted
    bad = _variant(
        out_dir, tmp_path,
        lambda d: d["model"].update(format="safetensors", factory="os:system", path=str(wine_files.safetensors)),
    )  # fmt: skip
    monkeypatch.setenv("CERTRISK_HOME", str(tmp_path / "home"))
    out = cli(
        "score",
        "--policy",
        bad,
        "--batch",
        wine_files.batch,
        "--no-record",
        "--out",
        tmp_path / "a",
    )
    assert out.exit_code == 2 and "os:system" in out.stderr and "CERTRISK_FACTORY_MODULES" in out.stderr
    assert not (tmp_path / "a").exists()


def test_score_errors(cli, drafted, tmp_path):
    out_dir, _ = drafted
    out = cli("score", "--policy", out_dir / "policy.yaml", "--batch", tmp_path / "none.parquet", "--no-record",
              "--out", tmp_path / "a")  # fmt: skip
    assert out.exit_code == 2 and "none.parquet: batch file not found" in out.stderr
