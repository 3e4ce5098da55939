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
