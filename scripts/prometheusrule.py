"""Print deploy/prometheus/carbonwatch-rules.yml as a Prometheus Operator PrometheusRule.

python scripts/prometheusrule.py > deploy/kubernetes/prometheusrule.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
HEADER = """\
# deploy/prometheus/carbonwatch-rules.yml as a Prometheus Operator PrometheusRule (the same
# groups; tests/test_deploy_files.py keeps the two equal). Regenerate after editing the rules:
#   python scripts/prometheusrule.py > deploy/kubernetes/prometheusrule.yaml
"""


def render() -> str:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "carbonwatch-rules.yml").read_text())
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "carbonwatch",
            "namespace": "carbonwatch",
            "labels": {"app.kubernetes.io/name": "carbonwatch"},
        },
        "spec": rules,
    }
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=100)


if __name__ == "__main__":
    sys.stdout.write(render())
