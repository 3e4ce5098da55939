//! Every example configuration shipped in deploy/ loads: no drift from the code.

#[test]
fn shipped_configs_load() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut files = vec![
        root.join("nimbus.example.toml"),
        root.join("compose.nimbus.toml"),
        root.join("k8s/base/nimbus.toml"),
        root.join("k8s/directory/app/directory.toml"),
    ];
    for e in std::fs::read_dir(root.join("regions")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            files.push(p);
        }
    }
    assert!(files.len() >= 6);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        nimbus_core::config::Config::load(&text, [])
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
}
