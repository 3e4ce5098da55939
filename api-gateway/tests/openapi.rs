//! The OpenAPI document is generated from the code; the committed copy in
//! `docs/openapi.json` must match it. To update it after changing the API:
//! `NIMBUS_UPDATE_OPENAPI=1 cargo test -p api-gateway --test openapi`.

#[test]
fn committed_openapi_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let generated = api_gateway::openapi_json();
    if std::env::var_os("NIMBUS_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, format!("{generated}\n")).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed.trim_end() == generated.trim_end(),
        "docs/openapi.json is out of date; regenerate it with NIMBUS_UPDATE_OPENAPI=1 cargo test -p api-gateway --test openapi"
    );
    let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert!(doc["paths"]["/v1/functions"]["post"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

/// A path parameter is one the path template names; everything else a handler
/// reads from the URL is a query parameter.
#[test]
fn path_parameters_are_in_the_path() {
    let doc: serde_json::Value = serde_json::from_str(&api_gateway::openapi_json()).unwrap();
    let mut wrong = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap();
                let in_template = path.contains(&format!("{{{name}}}"));
                if (p["in"] == "path") != in_template {
                    wrong.push(format!("{method} {path}: {name} in {}", p["in"]));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "misplaced parameters: {wrong:#?}");
}
