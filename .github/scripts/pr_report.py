"""What the GitHub workflow runs, as plain commands that work in any clone (and are tested that way).

    python .github/scripts/pr_report.py reproduce          # dvc pull (if a remote is set), dvc repro, accuracy floor
    python .github/scripts/pr_report.py report --base REV  # reports/pr_report.md: params/metrics diff vs REV, the card
    python .github/scripts/pr_report.py publish            # on GitHub: the PR comment, or the job summary

`publish` reads GitHub's environment: GITHUB_REPOSITORY, GITHUB_EVENT_NAME, PR_NUMBER, HEAD_REPO (the pull
request's head repository; another one means a fork, whose token cannot comment), GITHUB_STEP_SUMMARY, and
GH_TOKEN for the GitHub CLI (`gh`, or $GH). It edits the one comment that holds MARKER, or posts it once.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

MARKER = "<!-- mnist-mlp pr-report -->"  # finds our comment among the pull request's others
FLOOR_FILE = Path(".ci/min_test_accuracy")  # the test accuracy floor, also read by .ci/run
METRICS = Path("reports/metrics.json")
CARD = Path("reports/model_card.md")
REPORT = Path("reports/pr_report.md")
ARTIFACT = "pipeline-reports"  # the workflow uploads reports/ under this name


def run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    print("$ " + " ".join(argv), file=sys.stderr, flush=True)
    return subprocess.run(argv, check=check, text=True, capture_output=True)


def fail(message: str) -> None:
    raise SystemExit(f"error: {message}")


# --- reproduce -------------------------------------------------------------------------------------


def floor() -> float:
    return float(FLOOR_FILE.read_text().strip())


def check_floor(metrics_path: Path = METRICS) -> str:
    accuracy = json.loads(metrics_path.read_text())["test"]["accuracy"]
    limit = floor()
    if accuracy < limit:
        fail(f"test accuracy {accuracy} is below the floor {limit} ({FLOOR_FILE})")
    return f"test accuracy {accuracy} (floor {limit})"


def reproduce() -> None:
    remotes = run(["dvc", "remote", "list"]).stdout.strip()
    if remotes:
        # what the remote holds is not rerun; a missing or unreachable object only means more to reproduce
        pulled = run(["dvc", "pull", "--allow-missing"], check=False)
        print(pulled.stdout + pulled.stderr, end="")
    else:
        print("no DVC remote configured: reproducing from scratch")
    done = subprocess.run(["dvc", "repro"], text=True)
    if done.returncode:
        fail(f"dvc repro exited {done.returncode}")
    print(check_floor())


# --- report ----------------------------------------------------------------------------------------


def diff_table(kind: str, base: str) -> str:
    """`dvc params diff` / `dvc metrics diff` of the workspace against `base`, as a Markdown table."""
    done = run(["dvc", kind, "diff", base, "--md"], check=False)  # only what changed: the card lists all params
    if done.returncode:
        return f"`dvc {kind} diff {base}` failed:\n\n```\n{(done.stdout + done.stderr).strip()}\n```"
    return done.stdout.strip() or f"No {kind} changed against `{base}`."


def run_url() -> str | None:
    server, repo, run_id = (os.environ.get(k) for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID"))
    return f"{server}/{repo}/actions/runs/{run_id}" if server and repo and run_id else None


def commit_of(rev: str | None) -> str | None:
    """`rev` if it names a commit of this clone (a push's `before` is all zeros for a new branch)."""
    if not rev or not rev.strip("0"):
        return None
    done = run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], check=False)
    return rev if done.returncode == 0 else None


def report(base: str | None) -> str:
    parts = [MARKER, "## mnist-mlp: pipeline report", ""]
    base = commit_of(base)
    if base:
        short = run(["git", "rev-parse", "--short", base]).stdout.strip()
        parts += [
            f"Reproduced with `dvc repro`; differences against the base `{base}` ({short}).",
            "",
            "### Params (`dvc params diff`)",
            "",
            diff_table("params", base),
            "",
            "### Metrics (`dvc metrics diff`)",
            "",
            diff_table("metrics", base),
            "",
        ]
    else:
        parts += ["Reproduced with `dvc repro` (no base revision to compare with).", ""]
    if METRICS.exists() and FLOOR_FILE.exists():
        accuracy = json.loads(METRICS.read_text())["test"]["accuracy"]
        parts += [f"Test accuracy {accuracy} against the floor {floor()} (`{FLOOR_FILE}`).", ""]
    url = run_url()
    where = f"the `{ARTIFACT}` artifact of [this run]({url})" if url else f"the `{ARTIFACT}` build artifact"
    parts += [
        f"The pictures the card links (confusion matrix, misclassified digits, training curves) and the JSON "
        f"reports are in {where}.",
        "",
        "<details><summary>Model card (<code>reports/model_card.md</code>)</summary>",
        "",
        CARD.read_text().strip() if CARD.exists() else "_reports/model_card.md is missing_",
        "",
        "</details>",
        "",
    ]
    return "\n".join(parts)


# --- publish ---------------------------------------------------------------------------------------


def gh(*args: str, body: str | None = None) -> subprocess.CompletedProcess:
    argv = [os.environ.get("GH", "gh"), "api", *args]
    print("$ " + " ".join(argv), file=sys.stderr, flush=True)
    return subprocess.run(argv, input=body, text=True, capture_output=True)


def find_comment(repo: str, number: str) -> int | None:
    """The id of our earlier comment on the pull request (the first holding MARKER), if any."""
    done = gh(f"repos/{repo}/issues/{number}/comments", "--paginate", "--jq", ".[] | [.id, .body] | @json")
    if done.returncode:
        raise RuntimeError(done.stderr.strip())
    for line in done.stdout.splitlines():
        comment_id, text = json.loads(line)
        if MARKER in (text or ""):
            return int(comment_id)
    return None


def comment(repo: str, number: str, text: str) -> str:
    """Edit our comment, or post it the first time; return what was done."""
    payload = json.dumps({"body": text})
    existing = find_comment(repo, number)
    if existing is None:
        done = gh("--method", "POST", f"repos/{repo}/issues/{number}/comments", "--input", "-", body=payload)
        action = "posted a new comment"
    else:
        done = gh("--method", "PATCH", f"repos/{repo}/issues/comments/{existing}", "--input", "-", body=payload)
        action = f"updated comment {existing}"
    if done.returncode:
        raise RuntimeError(done.stderr.strip())
    return action


def to_summary(text: str) -> str:
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if not summary:
        print(text)
        return "printed the report (no GITHUB_STEP_SUMMARY)"
    with open(summary, "a") as f:
        f.write(text + "\n")
    return "wrote the report to the job summary"


def publish(path: Path) -> str:
    text = path.read_text()
    repo = os.environ.get("GITHUB_REPOSITORY", "")
    number = os.environ.get("PR_NUMBER", "")
    head_repo = os.environ.get("HEAD_REPO", "")
    if os.environ.get("GITHUB_EVENT_NAME") != "pull_request" or not number or not repo:
        return to_summary(text)
    if head_repo != repo:  # a fork: its token is read-only
        return to_summary(text) + f" (pull request from the fork {head_repo}: no comment)"
    try:
        return comment(repo, number, text)
    except RuntimeError as exc:  # e.g. a token without pull-requests: write
        print(f"warning: could not comment ({exc}); using the job summary", file=sys.stderr)
        return to_summary(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("reproduce", help="dvc pull when a remote is configured, dvc repro, the accuracy floor")
    rep = sub.add_parser("report", help="write the Markdown report")
    rep.add_argument("--base", help="the revision to diff against (a pull request's base); none: no diffs")
    rep.add_argument("--out", type=Path, default=REPORT)
    pub = sub.add_parser("publish", help="the pull request comment, or the job summary")
    pub.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    if args.command == "reproduce":
        reproduce()
    elif args.command == "report":
        text = report(args.base)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")
    else:
        print(publish(args.report))


if __name__ == "__main__":
    main()
