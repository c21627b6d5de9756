"""Validates the custom resources (KEDA) of YAML files against a JSON schema written here.

kubernetes-validate knows only the built-in kinds; this checks the others. Usage:
    python validate_crds.py SCHEMA.json FILE.yaml...
Prints one line per custom resource; exits 1 when one fails, 2 when a file holds a custom
resource whose group the schema does not cover.
"""
import json
import sys

import jsonschema
import yaml

CHECKED_GROUPS = ("keda.sh/",)
# Read by kustomize, never sent to the cluster.
CLIENT_SIDE = ("kustomize.config.k8s.io/",)


def main(argv):
    schema = json.load(open(argv[1]))
    kinds = set(schema["$defs"]) - {k for k in schema["$defs"] if k[0].islower()}
    failed = unknown = 0
    for path in argv[2:]:
        for doc in yaml.safe_load_all(open(path)):
            if not doc:
                continue
            api = doc.get("apiVersion", "")
            what = f"{path}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
            if api.startswith(CHECKED_GROUPS):
                kind = doc.get("kind")
                if kind not in kinds:
                    unknown += 1
                    print(f"FAIL {what}: the schema has no kind {kind} (it has {sorted(kinds)})")
                    continue
                # Validated against its own kind, so the error names the offending field.
                one = dict(schema, **{"$ref": f"#/$defs/{kind}"})
                one.pop("oneOf", None)
                errors = list(jsonschema.Draft202012Validator(one).iter_errors(doc))
                if errors:
                    failed += 1
                    best = jsonschema.exceptions.best_match(errors)
                    where = "/".join(str(p) for p in best.absolute_path)
                    print(f"FAIL {what}: at /{where}: {best.message}")
                else:
                    print(f"ok   {what}")
            elif "/" in api and "." in api.split("/")[0] and not api.startswith(CLIENT_SIDE) \
                    and not api.split("/")[0].endswith(".k8s.io"):
                unknown += 1
                print(f"FAIL {what}: no schema for the custom resource group of {api}")
    return 1 if failed else (2 if unknown else 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
