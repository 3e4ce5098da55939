//! A real Prometheus server (Debian's `prometheus`, which `.ci/run` installs)
//! scraping Nimbus processes: its OpenMetrics parser reads every `/metrics`, and
//! PromQL queries (the Grafana dashboard's) run against what it stored.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Prometheus {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes each (job, `host:port`) target's `/metrics` every second.
    pub async fn start(targets: &[(&str, String)]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: '{job}'\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let port = super::cluster::free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus must be installed (.ci/run installs Debian's prometheus)");
        let p = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let t = Instant::now();
        loop {
            if let Ok(r) = reqwest::get(format!("{}/-/ready", p.url)).await
                && r.status() == 200
            {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "prometheus did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        p
    }

    async fn get(&self, path: &str) -> Value {
        let r = reqwest::get(format!("{}{path}", self.url)).await.unwrap();
        r.json().await.unwrap()
    }

    /// Waits until every target was scraped at least `scrapes` times without an
    /// error (a parse error of the exposition is a scrape error).
    pub async fn wait_scraped(&self, scrapes: usize) {
        let t = Instant::now();
        let mut up_since: Option<Instant> = None;
        loop {
            let v = self.get("/api/v1/targets").await;
            let targets = v["data"]["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let bad: Vec<String> = targets
                .iter()
                .filter(|t| t["health"] != "up" || t["lastError"] != "")
                .map(|t| {
                    format!(
                        "{} {}: {} {}",
                        t["labels"]["job"], t["scrapeUrl"], t["health"], t["lastError"]
                    )
                })
                .collect();
            if !targets.is_empty() && bad.is_empty() {
                let since = *up_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_secs(scrapes as u64) {
                    return;
                }
            } else {
                up_since = None;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "targets not scraped cleanly: {bad:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// An instant query's result vector; panics if the query is refused.
    pub async fn query(&self, q: &str) -> Vec<Value> {
        let r = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", q)])
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["status"], "success", "{q}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Runs every query of the Grafana dashboard (variables set to everything, a
    /// 1 m rate window); returns the titles of the panels whose queries found no
    /// series.
    pub async fn empty_dashboard_panels(&self) -> Vec<String> {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/grafana/nimbus-dashboard.json"
        ))
        .unwrap();
        let dash: Value = serde_json::from_str(&text).unwrap();
        let mut empty = Vec::new();
        for panel in dash["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let q = target["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "1m")
                    .replace("$tenant", ".*")
                    .replace("$function", ".*");
                if self.query(&q).await.is_empty() {
                    empty.push(format!("{}: {q}", panel["title"]));
                }
            }
        }
        empty
    }
}
