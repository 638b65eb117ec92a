"""Upload compiled pipeline YAML files to a KFP API: the Helm chart's post-install Job runs this.

`python -m tightfit.pipelines.upload --host http://ml-pipeline.kubeflow:8888 fit_for_serving.yaml ...`
creates each pipeline (named after its file) or, when it exists, adds a version named after the file's
content hash, so re-running it (every `helm upgrade`) is idempotent. A bearer token comes from $KFP_TOKEN.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

from tightfit.errors import BackendError, ConfigError, TightfitError


def _version_name(path: Path) -> str:
    return f"{path.stem}-{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"


def upload_pipelines(
    host: str, files: list[Path], *, token: str | None = None, namespace: str | None = None
) -> list[str]:
    """Upload each compiled pipeline; returns one 'created'/'new version'/'unchanged' line per file."""
    import urllib3

    for path in files:
        if not path.is_file():
            raise ConfigError(f"pipeline file {path} not found; compile it first with `tightfit compile`")
    import kfp
    from kfp_server_api.exceptions import ApiException

    def unreachable(exc: Exception) -> BackendError:
        return BackendError(
            f"cannot reach the KFP API at {host} ({type(exc).__name__}); set kfp.uploadJob.host to the "
            "ml-pipeline service of your Kubeflow (e.g. http://ml-pipeline.kubeflow.svc.cluster.local:8888)"
        )

    try:  # the client checks the API's health on construction
        client = kfp.Client(host=host, existing_token=token, namespace=namespace or "kubeflow")
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise unreachable(exc) from exc
    report = []
    for path in files:
        name = path.stem
        version = _version_name(path)
        try:
            pipeline_id = client.get_pipeline_id(name)
            if pipeline_id is None:
                client.upload_pipeline(str(path), pipeline_name=name, description=f"tightfit {name}", namespace=namespace)
                report.append(f"{name}: created")
                continue
            client.upload_pipeline_version(str(path), pipeline_version_name=version, pipeline_id=pipeline_id)
            report.append(f"{name}: new version {version}")
        except ApiException as exc:
            if exc.status == 409:
                report.append(f"{name}: unchanged ({version} exists)")
                continue
            raise BackendError(f"KFP API at {host} refused {name}: {exc.status} {exc.reason}: {exc.body}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise unreachable(exc) from exc
    return report


def main(argv: list[str] | None = None) -> int:
    """CLI entry: upload the given files; errors print one line and exit 2."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True, help="KFP API endpoint")
    parser.add_argument("--namespace", default=None, help="KFP namespace (multi-user Kubeflow)")
    parser.add_argument("files", nargs="+", type=Path, help="compiled pipeline YAML files")
    args = parser.parse_args(argv)
    try:
        for line in upload_pipelines(
            args.host, args.files, token=os.environ.get("KFP_TOKEN") or None, namespace=args.namespace
        ):
            print(line)
    except TightfitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
