//! `nimbus usage`: the usage report as a table, with a bar chart on a terminal, or
//! as JSON or CSV.

use std::fmt::Write as _;
use std::io::IsTerminal as _;

use serde_json::Value;

use crate::cli::Client;

/// What `nimbus usage` asks for and how it prints it.
pub struct UsageArgs {
    /// Range start (day or RFC 3339).
    pub from: Option<String>,
    /// Range end (day, included, or RFC 3339).
    pub to: Option<String>,
    /// function, day, hour or tenant.
    pub group_by: Option<String>,
    /// An admin looking at one tenant.
    pub tenant: Option<String>,
    /// `table`, `json`, `yaml` or `csv`.
    pub output: String,
}

/// Runs `nimbus usage`.
pub async fn run(c: &Client, a: UsageArgs) -> anyhow::Result<()> {
    let mut query = Vec::new();
    for (k, v) in [("from", &a.from), ("to", &a.to), ("group_by", &a.group_by)] {
        if let Some(v) = v {
            query.push(format!("{k}={}", urlencode(v)));
        }
    }
    if a.output == "csv" {
        query.push("format=csv".into());
    }
    let base = match &a.tenant {
        Some(t) => format!("/v1/tenants/{}/usage", urlencode(t)),
        None => "/v1/usage".into(),
    };
    let path = if query.is_empty() {
        base
    } else {
        format!("{base}?{}", query.join("&"))
    };
    let (_, report) = c.call(reqwest::Method::GET, &path, None).await?;
    match a.output.as_str() {
        "csv" => print!("{}", report.as_str().unwrap_or_default()),
        "json" => println!("{}", serde_json::to_string_pretty(&report)?),
        "yaml" => print!("{}", crate::output::to_yaml(&report)),
        "table" => print!("{}", table(&report, std::io::stdout().is_terminal())),
        o => anyhow::bail!("-o {o}: expected table, json, yaml or csv"),
    }
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Width of the bar chart's longest bar.
const BAR: usize = 30;

/// The report as a table; with `chart`, each row gets a bar of its GB-seconds.
pub fn table(r: &Value, chart: bool) -> String {
    let group = r["group_by"].as_str().unwrap_or("function");
    let items = r["items"].as_array().map(Vec::as_slice).unwrap_or_default();
    let key = |i: &Value| i[group].as_str().unwrap_or("").to_string();
    let width = items
        .iter()
        .map(|i| key(i).chars().count())
        .chain([group.len(), "total".len()])
        .max()
        .unwrap_or(8);
    let max_gbs = items
        .iter()
        .filter_map(|i| i["gb_seconds"].as_f64())
        .fold(0.0, f64::max);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<width$}  {:>10} {:>8} {:>8} {:>9} {:>6} {:>14}{}",
        group.to_uppercase(),
        "REQUESTS",
        "ERRORS",
        "TIMEOUTS",
        "THROTTLES",
        "COLD",
        "GB-SECONDS",
        if group == "tenant" { "  CAP USED" } else { "" }
    );
    let row = |out: &mut String, name: &str, i: &Value| {
        let n = |k: &str| i[k].as_u64().unwrap_or(0);
        let gbs = i["gb_seconds"].as_f64().unwrap_or(0.0);
        let _ = write!(
            out,
            "{name:<width$}  {:>10} {:>8} {:>8} {:>9} {:>6} {:>14.3}",
            n("requests"),
            n("errors"),
            n("timeouts"),
            n("throttles"),
            n("cold_starts"),
            gbs
        );
        if group == "tenant" {
            match i["cap_used_pct"].as_f64() {
                Some(p) => {
                    let _ = write!(out, "  {p:>7.1}%");
                }
                None => out.push_str("         -"),
            }
        }
        if chart && max_gbs > 0.0 && name != "total" {
            let len = ((gbs / max_gbs) * BAR as f64).round() as usize;
            let _ = write!(out, "  {}", "█".repeat(len.max(usize::from(gbs > 0.0))));
        }
        out.push('\n');
    };
    for i in items {
        row(&mut out, &key(i), i);
    }
    row(&mut out, "total", &r["totals"]);
    let _ = writeln!(
        out,
        "\n{} to {}: estimated cost {:.4} {}",
        r["from"].as_str().unwrap_or("?"),
        r["to"].as_str().unwrap_or("?"),
        r["estimated_cost"].as_f64().unwrap_or(0.0),
        r["currency"].as_str().unwrap_or("")
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_table_with_bars_scaled_to_the_largest() {
        let r = json!({"group_by": "function", "from": "a", "to": "b", "estimated_cost": 0.5, "currency": "USD",
            "items": [
                {"function": "big", "requests": 10, "errors": 1, "timeouts": 0, "throttles": 2, "cold_starts": 1, "gb_seconds": 2.0},
                {"function": "small", "requests": 1, "errors": 0, "timeouts": 0, "throttles": 0, "cold_starts": 1, "gb_seconds": 1.0}],
            "totals": {"requests": 11, "errors": 1, "timeouts": 0, "throttles": 2, "cold_starts": 2, "gb_seconds": 3.0}});
        let t = table(&r, true);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("FUNCTION"), "{t}");
        assert!(
            lines[1].starts_with("big") && lines[1].ends_with(&"█".repeat(30)),
            "{t}"
        );
        assert!(lines[2].ends_with(&format!(" {}", "█".repeat(15))), "{t}");
        assert!(
            lines[3].starts_with("total") && !lines[3].contains('█'),
            "{t}"
        );
        assert!(t.contains("estimated cost 0.5000 USD"), "{t}");
        assert!(!table(&r, false).contains('█'));
    }
}
