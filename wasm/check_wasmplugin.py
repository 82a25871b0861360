#!/usr/bin/env python3
"""Checks certbound's Istio WasmPlugin manifests against the WasmPlugin CRD, without a cluster.

    check_wasmplugin.py CRD.yaml MANIFEST.yaml [MANIFEST.yaml ...]

What a Kubernetes API server would check, as far as it can be done here: the CRD's openAPIV3Schema
(JSON Schema: types, enums, patterns, required fields), unknown fields (which the API server would
silently prune, so a misspelt `failstrategy` would be lost), and the CRD's CEL rules that matter for
this manifest, re-stated in Python. Then what certbound needs: the AUTHN phase, FAIL_CLOSE, an oci://
URL tagged with the crate version, the ingress gateway selector, and a pluginConfig that is the JSON
block tests/distribution.rs hands to certbound's parser. Finally, that the checker rejects known-bad
manifests, so a passing run means something.

Prints one line per check and `N passed, N failed`; exits 1 if any check failed.
"""

import copy
import json
import re
import sys
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import yaml

REPO = Path(__file__).resolve().parent.parent
ISTIO_CLUSTER = "outbound|443||login.example.com"


def crate_version():
    match = re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "Cargo.toml").read_text(), re.M)
    if not match:
        raise SystemExit("check_wasmplugin: no version in Cargo.toml")
    return match.group(1)


def load_crd(path):
    crd = yaml.safe_load(Path(path).read_text())
    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"]
    versions = {
        f"{group}/{v['name']}": v["schema"]["openAPIV3Schema"]
        for v in crd["spec"]["versions"]
        if v.get("served")
    }
    return kind, versions


def closed(schema):
    """The schema with unknown fields forbidden wherever Kubernetes would prune them."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
                and "additionalProperties" not in node
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    # The top level also holds apiVersion, kind and metadata, which the CRD schema does not list.
    for field in ("apiVersion", "kind", "metadata"):
        schema.setdefault("properties", {})[field] = {}
    return schema


def cel_rules(spec):
    """The CRD's x-kubernetes-validations that apply to this manifest, as error strings."""
    errors = []
    url = spec.get("url", "")
    scheme = urlparse(url if "://" in url else "http://" + url).scheme
    if scheme not in ("", "http", "https", "oci", "file"):
        errors.append(f"url must have schema one of [http, https, file, oci], not {scheme!r}")
    if sum(1 for k in ("selector", "targetRef", "targetRefs") if k in spec) > 1:
        errors.append("only one of targetRefs or selector can be set")
    labels = (spec.get("selector") or {}).get("matchLabels") or {}
    for key, value in labels.items():
        if not key or "*" in key:
            errors.append(f"selector label key {key!r}: empty or wildcard")
        if "*" in str(value):
            errors.append(f"selector label value {value!r}: wildcard")
    return errors


def schema_errors(doc, kind, versions):
    """Everything the API server would refuse (or silently drop) in `doc`."""
    if doc.get("kind") != kind:
        return [f"kind is {doc.get('kind')!r}, not {kind!r}"]
    schema = versions.get(doc.get("apiVersion"))
    if schema is None:
        return [f"apiVersion {doc.get('apiVersion')!r} is not one of {sorted(versions)}"]
    if not (doc.get("metadata") or {}).get("name"):
        return ["metadata.name is required"]
    validator = jsonschema.Draft7Validator(closed(schema))
    errors = [
        f"{'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]
    return errors + cel_rules(doc.get("spec") or {})


def plugin_config_block(text):
    """The JSON text after `pluginConfig:` (what tests/distribution.rs reads), parsed."""
    start = text.index("pluginConfig:") + len("pluginConfig:")
    value, _ = json.JSONDecoder().raw_decode(text[start:].lstrip())
    return value


def certbound_errors(doc, text, version):
    spec = doc.get("spec") or {}
    errors = []
    expect = {
        "phase": "AUTHN",
        "failStrategy": "FAIL_CLOSE",
        "imagePullPolicy": "IfNotPresent",
        "pluginName": "certbound",
    }
    for field, value in expect.items():
        if spec.get(field) != value:
            errors.append(f"spec.{field} is {spec.get(field)!r}, expected {value!r}")
    url = spec.get("url", "")
    if not re.fullmatch(r"oci://[^/]+(/[^/:@]+)*/certbound:" + re.escape(version), url):
        errors.append(f"spec.url {url!r} is not oci://<registry>/certbound:{version}")
    if not re.fullmatch(r"[0-9a-f]{64}", str(spec.get("sha256", ""))):
        errors.append("spec.sha256 must be set (64 lower-case hex digits)")
    if (spec.get("selector") or {}).get("matchLabels") != {"istio": "ingressgateway"}:
        errors.append("spec.selector.matchLabels must be {istio: ingressgateway}")
    config = spec.get("pluginConfig")
    if not isinstance(config, dict):
        return errors + ["spec.pluginConfig must be a mapping"]
    try:
        if plugin_config_block(text) != config:
            errors.append("the JSON block after pluginConfig: differs from the YAML value")
    except ValueError as e:
        errors.append(f"pluginConfig is not a JSON block (keep it in JSON form): {e}")
    for section in ("introspection", "jwt.jwks"):
        node = config
        for part in section.split("."):
            node = (node or {}).get(part)
        cluster = (node or {}).get("cluster")
        if cluster != ISTIO_CLUSTER:
            errors.append(f"pluginConfig.{section}.cluster is {cluster!r}, expected {ISTIO_CLUSTER!r}")
    return errors


# Each must be rejected by schema_errors: (what, how to break a valid manifest).
def _set(path, value):
    def apply(doc):
        node = doc
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    return apply


def _del(path):
    def apply(doc):
        node = doc
        for part in path[:-1]:
            node = node[part]
        del node[path[-1]]
    return apply


BAD = [
    ("an unknown failStrategy", _set(["spec", "failStrategy"], "FAIL_SOMETIMES")),
    ("an unknown phase", _set(["spec", "phase"], "AUTHZN")),
    ("an upper-case sha256", _set(["spec", "sha256"], "AB" * 32)),
    ("a short sha256", _set(["spec", "sha256"], "abc")),
    ("no url", _del(["spec", "url"])),
    ("an ftp:// url", _set(["spec", "url"], "ftp://registry.example.com/certbound")),
    ("a misspelt field (failstrategy)", _set(["spec", "failstrategy"], "FAIL_CLOSE")),
    ("pluginConfig as a string", _set(["spec", "pluginConfig"], "{}")),
    ("selector and targetRef together", _set(["spec", "targetRef"], {"kind": "Gateway", "name": "g"})),
    ("a wildcard selector value", _set(["spec", "selector", "matchLabels", "istio"], "*")),
    ("another kind", _set(["kind"], "EnvoyFilter")),
    ("another apiVersion", _set(["apiVersion"], "extensions.istio.io/v9")),
]


def main(argv):
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    kind, versions = load_crd(argv[1])
    version = crate_version()
    passed = failed = 0

    def check(name, errors):
        nonlocal passed, failed
        if errors:
            failed += 1
            print(f"FAIL {name}")
            for e in errors:
                print(f"     {e}")
        else:
            passed += 1
            print(f"ok   {name}")

    for path in argv[2:]:
        text = Path(path).read_text()
        docs = [d for d in yaml.safe_load_all(text) if d]
        if len(docs) != 1:
            check(f"{path}: one document", [f"found {len(docs)} documents"])
            continue
        doc = docs[0]
        check(f"{path}: valid against the {kind} CRD schema", schema_errors(doc, kind, versions))
        check(f"{path}: what certbound needs", certbound_errors(doc, text, version))
        for what, breaks in BAD:
            bad = copy.deepcopy(doc)
            breaks(bad)
            rejected = schema_errors(bad, kind, versions)
            check(f"{path}: the check rejects {what}", [] if rejected else ["accepted"])

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
