//! Every example configuration shipped in deploy/ loads: no drift from the code.

use std::path::Path;

fn load(path: &Path, env: Vec<(String, String)>) {
    let text = std::fs::read_to_string(path).unwrap();
    nimbus_core::config::Config::load(&text, env)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

#[test]
fn shipped_configs_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut files = vec![
        root.join("nimbus.example.toml"),
        root.join("compose.nimbus.toml"),
    ];
    for e in std::fs::read_dir(root.join("regions")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            files.push(p);
        }
    }
    assert!(files.len() >= 4);
    for f in files {
        load(&f, vec![]);
    }
}

/// The `NIMBUS_*=…` literals of a kustomization's generators.
fn literals(kustomization: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(kustomization)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .filter(|l| l.starts_with("NIMBUS_"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The Kubernetes config files load with what each overlay sets (the dev overlay's
/// generated secrets; for the region overlays, stand-ins for the operator's Secret).
#[test]
fn kubernetes_configs_load_with_each_overlay() {
    let k8s = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s");
    let secret = [
        ("NIMBUS_DATABASE__URL", "postgres://nimbus@db:5432/nimbus"),
        ("NIMBUS_BUS__URL", "amqp://nimbus:x@mq:5672/%2f"),
        ("NIMBUS_API__JWT_SECRET", "0123456789abcdef0123456789abcdef"),
    ];
    let mut overlays = 0;
    for e in std::fs::read_dir(k8s.join("overlays")).unwrap() {
        let dir = e.unwrap().path();
        let mut env = literals(&dir.join("kustomization.yaml"));
        for (k, v) in secret {
            if !env.iter().any(|(name, _)| name == k) {
                env.push((k.into(), v.into()));
            }
        }
        assert!(
            env.iter().any(|(k, _)| k == "NIMBUS_REGION__NAME"),
            "{}",
            dir.display()
        );
        load(&k8s.join("base/nimbus.toml"), env);
        overlays += 1;
    }
    assert!(overlays >= 3);
    load(
        &k8s.join("directory/app/directory.toml"),
        vec![("NIMBUS_DIRECTORY__TOKEN".into(), "t".into())],
    );
}
