#!/usr/bin/env python3
"""Writes the endpoint reference of docs/api.md from docs/openapi.json.

docs/api.md is hand-written down to the marker line; everything after it is
generated here. `--check` fails (exit 1) if the file is not what this would write,
so CI catches an API change whose reference was not regenerated:

    python3 scripts/gen-api-doc.py          # rewrite docs/api.md
    python3 scripts/gen-api-doc.py --check  # CI
"""
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "api.md"
SPEC = ROOT / "docs" / "openapi.json"
MARKER = "<!-- Everything below is generated from docs/openapi.json by scripts/gen-api-doc.py. -->"
METHODS = ["get", "post", "put", "patch", "delete"]


def one_line(text):
    return " ".join((text or "").split())


def schema_name(schema):
    if not schema:
        return ""
    ref = schema.get("$ref")
    if ref:
        return ref.rsplit("/", 1)[-1]
    if schema.get("type") == "array":
        return schema_name(schema.get("items")) + "[]"
    return schema.get("type", "")


def body_of(content):
    if not content:
        return ""
    for _, media in content.items():
        return schema_name(media.get("schema"))
    return ""


def endpoint(path, method, op):
    out = [f"### `{method.upper()} {path}`", ""]
    summary = one_line(op.get("summary") or op.get("description"))
    if summary:
        out += [summary, ""]
    params = op.get("parameters", [])
    if params:
        out += ["| parameter | in | required | what |", "|---|---|---|---|"]
        for p in params:
            req = "yes" if p.get("required") else "no"
            out.append(
                f"| `{p['name']}` | {p['in']} | {req} | {one_line(p.get('description'))} |"
            )
        out.append("")
    req = op.get("requestBody")
    if req:
        name = body_of(req.get("content"))
        what = one_line(req.get("description"))
        out += [f"Body: {('`' + name + '`') if name else ''}{(' — ' + what) if what else ''}", ""]
    responses = op.get("responses", {})
    if responses:
        out += ["| status | what | body |", "|---|---|---|"]
        for status, r in responses.items():
            name = body_of(r.get("content"))
            out.append(
                f"| {status} | {one_line(r.get('description'))} | {('`' + name + '`') if name else ''} |"
            )
        out.append("")
    return out


def generate(spec):
    by_tag = {}
    for path, ops in spec["paths"].items():
        for method in METHODS:
            op = ops.get(method)
            if op is None:
                continue
            tag = (op.get("tags") or ["other"])[0]
            by_tag.setdefault(tag, []).append((path, method, op))
    out = [MARKER, "", "## Endpoints", ""]
    for tag in sorted(by_tag):
        out += [f"## {tag}", ""]
        for path, method, op in by_tag[tag]:
            out += endpoint(path, method, op)
    schemas = spec.get("components", {}).get("schemas", {})
    if schemas:
        out += ["## Bodies", ""]
        for name in sorted(schemas):
            s = schemas[name]
            out += [f"### `{name}`", ""]
            desc = one_line(s.get("description"))
            if desc:
                out += [desc, ""]
            props = s.get("properties", {})
            if props:
                required = set(s.get("required", []))
                out += ["| field | type | required | what |", "|---|---|---|---|"]
                for field, p in props.items():
                    kind = schema_name(p) or "/".join(
                        t for t in ([p.get("type")] if isinstance(p.get("type"), str) else p.get("type", [])) if t
                    )
                    out.append(
                        f"| `{field}` | {kind} | {'yes' if field in required else 'no'} | {one_line(p.get('description'))} |"
                    )
                out.append("")
    return "\n".join(out).rstrip() + "\n"


def main():
    spec = json.loads(SPEC.read_text())
    text = DOC.read_text()
    if MARKER not in text:
        sys.exit(f"{DOC}: the marker line is missing:\n{MARKER}")
    head = text.split(MARKER, 1)[0]
    want = head + generate(spec)
    if "--check" in sys.argv[1:]:
        if text != want:
            sys.exit(
                "docs/api.md is out of date with docs/openapi.json: run python3 scripts/gen-api-doc.py"
            )
        return
    DOC.write_text(want)


if __name__ == "__main__":
    main()
