"""The users' GitHub workflow (.github/workflows/pipeline.yml) and its script (.github/scripts/pr_report.py).

GitHub is not reachable here, so the workflow is checked offline by the two pinned linters (the GitHub
workflow JSON schema and zizmor's security audit) and by its shape; the script's publishing is run against
a fake `gh` that records its calls. The report itself, on a real two-commit repo, is tested in
tests/test_dvc_experience.py (slow).
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import REPO

WORKFLOW = REPO / ".github/workflows/pipeline.yml"
SCRIPT = REPO / ".github/scripts/pr_report.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("pr_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pr_report = _load_script()


def _tool(name: str) -> str:
    """An installed console script (pinned in requirements.txt): beside this python, else on PATH."""
    for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        path = Path(folder) / name
        if path.exists():
            return str(path)
    path = shutil.which(name)
    assert path, f"{name} is not installed: python -m pip install -r requirements.txt"
    return path


def _zizmor(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_tool("zizmor"), "--offline", "--no-progress", "--persona=pedantic", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- the linters -----------------------------------------------------------------------------------


def test_workflow_matches_the_github_workflow_schema():
    done = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok -- validation done" in done.stdout


def test_zizmor_finds_nothing_even_pedantic():
    done = _zizmor(WORKFLOW)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No findings" in done.stdout, done.stdout


def test_zizmor_would_catch_a_template_injection(tmp_path):
    """The audit really runs: a PR title expanded in a `run:` is a finding."""
    bad = tmp_path / ".github/workflows/bad.yml"
    bad.parent.mkdir(parents=True)
    text = WORKFLOW.read_text().replace(
        "run: python -m pytest", 'run: echo "${{ github.event.pull_request.title }}" && python -m pytest'
    )
    assert text != WORKFLOW.read_text()
    bad.write_text(text)
    done = _zizmor(bad)
    assert done.returncode != 0 and "template-injection" in done.stdout, done.stdout


# --- its shape -------------------------------------------------------------------------------------


def _workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def test_workflow_is_thin_pinned_and_least_privilege():
    flow = _workflow()
    triggers = flow[True]  # YAML 1.1 reads the key `on` as True
    assert set(triggers) == {"push", "pull_request"}
    assert flow["permissions"] == {}
    (job,) = flow["jobs"].values()
    assert job["permissions"] == {"contents": "read", "pull-requests": "write"}
    steps = job["steps"]
    for step in steps:
        if "uses" in step:
            assert re.fullmatch(r"[\w-]+/[\w-]+@[0-9a-f]{40}", step["uses"]), step["uses"]
        if "run" in step:
            assert "${{" not in step["run"], f"pass values through env:, not into the shell: {step['run']}"
            assert step["run"].count("\n") <= 1, "the work belongs in the script"
    setup = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python@"))
    assert setup["with"]["python-version"] == "3.11" and setup["with"]["cache"] == "pip"
    runs = [s["run"] for s in steps if "run" in s]
    assert "python -m pip install -r requirements.txt" in runs and "python -m pytest" in runs
    for command in ("reproduce", "report", "publish"):
        assert any(r.startswith(f"python .github/scripts/pr_report.py {command}") for r in runs), runs
    checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0  # the base commit is needed for the diffs
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["with"]["name"] == pr_report.ARTIFACT and "reports/" in upload["with"]["path"]


def test_accuracy_floor_lives_in_one_place():
    floor = float((REPO / pr_report.FLOOR_FILE).read_text())
    ci = (REPO / ".ci/run").read_text()
    assert "MIN_TEST_ACCURACY=$(cat .ci/min_test_accuracy)" in ci
    assert str(floor) not in ci  # not repeated as a literal
    assert pr_report.FLOOR_FILE == Path(".ci/min_test_accuracy")


def test_check_floor(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci/min_test_accuracy").write_text("0.985\n")
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"test": {"accuracy": 0.99}}))
    assert pr_report.check_floor(metrics) == "test accuracy 0.99 (floor 0.985)"
    metrics.write_text(json.dumps({"test": {"accuracy": 0.98}}))
    with pytest.raises(SystemExit, match="below the floor 0.985"):
        pr_report.check_floor(metrics)


# --- publishing, against a fake gh -----------------------------------------------------------------

FAKE_GH = """\
import json, os, sys
log = os.environ["FAKE_GH_LOG"]
with open(log, "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "stdin": "" if sys.stdin.isatty() else sys.stdin.read()}) + "\\n")
if os.environ.get("FAKE_GH_FAIL"):
    sys.exit("HTTP 403: Resource not accessible by integration")
if "--paginate" in sys.argv:
    for comment in json.loads(os.environ["FAKE_GH_COMMENTS"]):
        print(json.dumps([comment["id"], comment["body"]]))
"""


@pytest.fixture
def github(tmp_path, monkeypatch):
    gh = tmp_path / "gh"
    gh.write_text(f"#!{sys.executable}\n{FAKE_GH}")
    gh.chmod(0o755)
    log, summary, report = tmp_path / "gh.log", tmp_path / "summary.md", tmp_path / "pr_report.md"
    report.write_text(f"{pr_report.MARKER}\n## report\n| a | b |\n")
    for key, value in {
        "GH": str(gh),
        "FAKE_GH_LOG": str(log),
        "FAKE_GH_COMMENTS": "[]",
        "GITHUB_STEP_SUMMARY": str(summary),
        "GITHUB_REPOSITORY": "team/mnist-mlp",
        "GITHUB_EVENT_NAME": "pull_request",
        "PR_NUMBER": "7",
        "HEAD_REPO": "team/mnist-mlp",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("FAKE_GH_FAIL", raising=False)

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return SimpleNamespace(report=report, summary=summary, calls=calls)


def test_first_push_posts_one_comment(github):
    assert pr_report.publish(github.report) == "posted a new comment"
    listed, posted = github.calls()
    assert listed["argv"][:2] == ["api", "repos/team/mnist-mlp/issues/7/comments"]
    assert posted["argv"] == ["api", "--method", "POST", "repos/team/mnist-mlp/issues/7/comments", "--input", "-"]
    assert json.loads(posted["stdin"]) == {"body": github.report.read_text()}
    assert not github.summary.exists()


def test_next_push_edits_the_comment_holding_the_marker(github, monkeypatch):
    comments = [
        {"id": 11, "body": "LGTM"},
        {"id": 12, "body": f"{pr_report.MARKER}\nold report"},
        {"id": 13, "body": None},
    ]
    monkeypatch.setenv("FAKE_GH_COMMENTS", json.dumps(comments))
    assert pr_report.publish(github.report) == "updated comment 12"
    _, edited = github.calls()
    assert edited["argv"] == ["api", "--method", "PATCH", "repos/team/mnist-mlp/issues/comments/12", "--input", "-"]
    assert json.loads(edited["stdin"])["body"] == github.report.read_text()


def test_a_fork_gets_the_job_summary_and_no_api_call(github, monkeypatch):
    monkeypatch.setenv("HEAD_REPO", "someone/mnist-mlp")
    assert pr_report.publish(github.report).startswith("wrote the report to the job summary")
    assert github.calls() == [] and github.summary.read_text().startswith(pr_report.MARKER)


def test_a_push_gets_the_job_summary(github, monkeypatch):
    monkeypatch.setenv("GITHUB_EVENT_NAME", "push")
    monkeypatch.setenv("PR_NUMBER", "")
    assert pr_report.publish(github.report) == "wrote the report to the job summary"
    assert github.calls() == []


def test_a_read_only_token_falls_back_to_the_job_summary(github, monkeypatch):
    monkeypatch.setenv("FAKE_GH_FAIL", "1")
    assert pr_report.publish(github.report) == "wrote the report to the job summary"
    assert "## report" in github.summary.read_text()
