//! `nimbus usage`: the usage report as a table, with a bar chart on a terminal, or
//! as JSON or CSV; `nimbus fn metrics`: a function's calls and durations over time.

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

/// What `nimbus fn metrics` asks for.
pub struct MetricsArgs {
    pub name: String,
    /// How far back: `90s`, `15m`, `6h`, `7d` (when `from` is not given).
    pub since: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    /// Seconds per row.
    pub period: Option<u32>,
}

/// Runs `nimbus fn metrics`: a table of the periods with calls (a bar of
/// invocations on a terminal), or the whole answer as JSON or YAML.
pub async fn metrics(
    c: &Client,
    a: MetricsArgs,
    format: crate::output::Format,
) -> anyhow::Result<()> {
    let mut query = Vec::new();
    let from = match (&a.from, &a.since) {
        (Some(f), _) => Some(f.clone()),
        (None, Some(s)) => {
            let ms = parse_since(s)?;
            Some(nimbus_core::rfc3339(nimbus_core::now_ms() - ms))
        }
        (None, None) => None,
    };
    for (k, v) in [("from", &from), ("to", &a.to)] {
        if let Some(v) = v {
            query.push(format!("{k}={}", urlencode(v)));
        }
    }
    if let Some(p) = a.period {
        query.push(format!("period={p}"));
    }
    let mut path = format!("/v1/functions/{}/metrics", urlencode(&a.name));
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let (_, m) = c.call(reqwest::Method::GET, &path, None).await?;
    match format {
        crate::output::Format::Table => {
            print!("{}", metrics_table(&m, std::io::stdout().is_terminal()))
        }
        f => crate::output::print_as(f, &m, &[]),
    }
    Ok(())
}

/// `15m`, `6h`, `7d`, `90s` as milliseconds.
fn parse_since(s: &str) -> anyhow::Result<i64> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = n.parse().map_err(|_| {
        anyhow::anyhow!("--since {s}: expected a number and s, m, h or d, e.g. 15m")
    })?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" | "" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => anyhow::bail!("--since {s}: expected a number and s, m, h or d, e.g. 15m"),
    };
    n.checked_mul(unit_ms)
        .filter(|ms| *ms > 0 && *ms <= 366 * 86_400_000)
        .ok_or_else(|| anyhow::anyhow!("--since {s}: from 1s to 366d"))
}

/// A function's metrics as a table: the periods with calls, then the totals.
pub fn metrics_table(m: &Value, chart: bool) -> String {
    let points: Vec<&Value> = m["points"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter(|p| {
                    p["invocations"].as_u64().unwrap_or(0) + p["throttles"].as_u64().unwrap_or(0)
                        > 0
                })
                .collect()
        })
        .unwrap_or_default();
    let most = points
        .iter()
        .filter_map(|p| p["invocations"].as_u64())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20}  {:>11} {:>7} {:>8} {:>9} {:>5} {:>9} {:>9} {:>9}",
        "TIME",
        "INVOCATIONS",
        "ERRORS",
        "TIMEOUTS",
        "THROTTLES",
        "COLD",
        "P50 MS",
        "P99 MS",
        "MAX MS"
    );
    let row = |out: &mut String, name: &str, p: &Value| {
        let n = |k: &str| p[k].as_u64().unwrap_or(0);
        let ms = |k: &str| p[k].as_f64().map_or("-".to_string(), |v| format!("{v:.2}"));
        let _ = write!(
            out,
            "{name:<20}  {:>11} {:>7} {:>8} {:>9} {:>5} {:>9} {:>9} {:>9}",
            n("invocations"),
            n("errors"),
            n("timeouts"),
            n("throttles"),
            n("cold_starts"),
            ms("duration_p50_ms"),
            ms("duration_p99_ms"),
            ms("duration_max_ms"),
        );
        if chart && most > 0 && name != "total" {
            let len = (n("invocations") as f64 / most as f64 * BAR as f64).round() as usize;
            let _ = write!(
                out,
                "  {}",
                "█".repeat(len.max(usize::from(n("invocations") > 0)))
            );
        }
        out.push('\n');
    };
    for p in &points {
        let time = p["time"].as_str().unwrap_or("?");
        row(&mut out, time.get(..19).unwrap_or(time), p);
    }
    row(&mut out, "total", &m["totals"]);
    let _ = writeln!(
        out,
        "\n{} to {}, {} s per row; periods without calls left out",
        m["from"].as_str().unwrap_or("?"),
        m["to"].as_str().unwrap_or("?"),
        m["period_s"].as_u64().unwrap_or(0)
    );
    out
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

    #[test]
    fn metrics_rows_are_the_periods_with_calls() {
        let m = json!({"from": "a", "to": "b", "period_s": 60,
            "points": [
                {"time": "2026-12-06T03:00:00.000Z", "invocations": 4, "errors": 1, "timeouts": 0, "throttles": 0,
                 "cold_starts": 1, "duration_p50_ms": 1.5, "duration_p99_ms": 9.0, "duration_max_ms": 9.2},
                {"time": "2026-12-06T03:01:00.000Z", "invocations": 0, "errors": 0, "timeouts": 0, "throttles": 0,
                 "cold_starts": 0, "duration_p50_ms": null, "duration_p99_ms": null, "duration_max_ms": null},
                {"time": "2026-12-06T03:02:00.000Z", "invocations": 2, "errors": 0, "timeouts": 0, "throttles": 0,
                 "cold_starts": 0, "duration_p50_ms": 1.0, "duration_p99_ms": 2.0, "duration_max_ms": 2.0}],
            "totals": {"invocations": 6, "errors": 1, "timeouts": 0, "throttles": 0, "cold_starts": 1,
                "duration_p50_ms": 1.2, "duration_p99_ms": 9.0, "duration_max_ms": 9.2}});
        let t = metrics_table(&m, true);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("TIME"), "{t}");
        assert!(lines[1].starts_with("2026-12-06T03:00:00 "), "{t}");
        assert!(lines[1].ends_with(&"█".repeat(30)), "{t}");
        assert!(lines[2].starts_with("2026-12-06T03:02:00 "), "{t}");
        assert!(lines[2].ends_with(&format!(" {}", "█".repeat(15))), "{t}");
        assert!(
            lines[3].starts_with("total") && lines[3].contains("9.20"),
            "{t}"
        );
        assert_eq!(parse_since("15m").unwrap(), 900_000);
        assert_eq!(parse_since("2h").unwrap(), 7_200_000);
        assert!(parse_since("soon").is_err());
        assert!(parse_since("0s").is_err());
    }
}
